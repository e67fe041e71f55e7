"""Build the boinc-vm appliance: a small Debian disk that boots on its own and
starts our guest agent, in the spirit of CernVM.

Recipe (measured in ``shared/qemu_guest.md``, "A disk that boots on its own"):
debootstrap minbase + python3 + Twisted into a root tree, a Debian kernel
installed in it, a tiny busybox initramfs of our own (Debian's would start
udev, seconds under TCG), an MBR disk with one active ext4 partition labelled
``approot`` and extlinux on it, then qcow2 (QEMU) and VDI/VMDK (VirtualBox).

Two cache levels, both under the output directory, so a rebuild is cheap:

* ``debootstrap-<key>/root``: the debootstrapped tree (~1 minute to make), shared
  by both kernel flavours; its key covers the suite, mirror and package list;
* ``base-<key>/root``: that tree with a kernel flavour installed (seconds);
* ``image-<key>/``: the finished disks; the key adds the guest scripts and the
  ``vmcontroller`` package copied into the image, so a change to the agent code
  rebuilds the disk (seconds) but not the root tree.

``current`` points at the newest image. Needs root (chroot, loop mounts).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import vmcontroller
from vmwrapper.appliance.cpio import write_newc

#: Bump when the recipe changes in a way the keys would not notice.
RECIPE_VERSION = 1
GUEST_DIR = Path(__file__).resolve().parent / "guest"
#: Packages in the image besides minbase. Without python3-cffi-backend Twisted
#: stays unconfigured (qemu_guest.md).
PACKAGES = ("python3", "python3-twisted", "python3-cffi-backend", "busybox-static")
#: Kernel flavours: "cloud" boots ~4 s faster under TCG (LZ4) but lacks AHCI,
#: e1000 and floppy; "generic" has them (VirtualBox with default controllers).
KERNELS = {"cloud": "linux-image-cloud-amd64", "generic": "linux-image-amd64"}
#: Modules the initramfs loads to find the root disk under QEMU and VirtualBox.
INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "ata_piix", "ahci", "sd_mod",
                  "crc32c_generic", "ext4")
PARTITION_OFFSET = 1024 * 1024
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1 net.ifnames=0"
#: Where the guest agent's package lives inside the image.
AGENT_ROOT = "/opt/boinc-vm"
FORMATS = ("qcow2", "vdi", "vmdk")


class BuildError(Exception):
    """The appliance could not be built; the message says which step and why."""


@dataclass(frozen=True)
class BuildOptions:
    """What to build and where.

    :param output: cache directory holding ``base-*``, ``image-*`` and ``current``.
    :param kernel: a key of ``KERNELS``.
    :param formats: disk formats to write, from ``FORMATS`` (qcow2 is always written;
        a cached image is exported to formats it lacks without a rebuild).
    :param disk_mb: size of the (sparse) disk.
    :param force: rebuild the image (and the root tree) even when cached.
    """

    output: Path
    kernel: str = "cloud"
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    formats: tuple[str, ...] = FORMATS
    disk_mb: int = 1024
    force: bool = False

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise BuildError(f"unknown kernel flavour {self.kernel!r}; valid: "
                             f"{', '.join(KERNELS)}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise BuildError(f"unknown disk format(s) {', '.join(bad)}; valid: {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Appliance:
    """A built appliance: its disks by format and what went into it."""

    directory: Path
    key: str
    kernel_version: str
    disks: dict[str, Path] = field(default_factory=dict)
    #: Kernel and initramfs for the KVM probe boot (``QemuDriver(probe_kernel=...)``).
    probe_kernel: Path | None = None
    probe_initrd: Path | None = None

    @property
    def qcow2(self) -> Path:
        """The disk QEMU boots (never written: drivers put an overlay over it)."""
        return self.disks["qcow2"]


def default_output() -> Path:
    """``$BOINCVM_APPLIANCE_CACHE``, else ``.cache/appliance`` in the source tree (git-ignored)."""
    env = os.environ.get("BOINCVM_APPLIANCE_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".cache" / "appliance"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def _tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def agent_package_dir() -> Path:
    """The ``vmcontroller`` package copied into the image (the guest agent's code)."""
    return Path(vmcontroller.__file__).resolve().parent


def base_key(opts: BuildOptions) -> str:
    """Cache key of the root tree: changes when its Debian inputs change."""
    return _digest(str(RECIPE_VERSION).encode(), opts.suite.encode(), opts.mirror.encode(),
                   " ".join(PACKAGES).encode(), KERNELS[opts.kernel].encode())


def image_key(opts: BuildOptions) -> str:
    """Cache key of the disks: the root tree's key plus every file copied into the image."""
    parts = [base_key(opts).encode(), KERNEL_CMDLINE.encode(), " ".join(INITRD_MODULES).encode(),
             str(opts.disk_mb).encode()]
    for directory in (GUEST_DIR, agent_package_dir()):
        for path in _tree_files(directory):
            parts += [str(path.relative_to(directory)).encode(), path.read_bytes()]
    return _digest(*parts)


def _run(argv: list[str], step: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise BuildError(f"{step}: {argv[0]} is not installed (run scripts/bootstrap.sh)") from None
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or error.stdout or "").strip()[-2000:]
        raise BuildError(f"{step}: {' '.join(argv[:3])}... failed with status "
                         f"{error.returncode}:\n{tail}") from None


@contextlib.contextmanager
def _locked(output: Path) -> Iterator[None]:
    """One build at a time per cache directory (tests and benches may race)."""
    output.mkdir(parents=True, exist_ok=True)
    with open(output / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for kind, source, target in (("proc", "proc", "proc"), ("sysfs", "sys", "sys"),
                                     ("bind", "/dev", "dev")):
            path = root / target
            path.mkdir(exist_ok=True)
            args = ["mount", "--bind", source, str(path)] if kind == "bind" else \
                ["mount", "-t", kind, source, str(path)]
            _run(args, f"mounting {target} in the chroot")
            mounted.append(path)
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)


def debootstrap_key(opts: BuildOptions) -> str:
    """Cache key of the debootstrapped tree shared by both kernel flavours."""
    return _digest(str(RECIPE_VERSION).encode(), opts.suite.encode(), opts.mirror.encode(),
                   " ".join(PACKAGES).encode())


def _debootstrap(opts: BuildOptions, log: Callable[[str], None]) -> Path:
    """The debootstrapped tree without a kernel (apt lists kept for the kernel step)."""
    final = opts.output / f"debootstrap-{debootstrap_key(opts)}"
    if (final / "root").is_dir() and not opts.force:
        return final / "root"
    work = Path(tempfile.mkdtemp(prefix=".debootstrap-", dir=opts.output))
    try:
        log(f"debootstrap {opts.suite} minbase + {', '.join(PACKAGES)} (about a minute)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
              opts.suite, str(work / "root"), opts.mirror], "debootstrap")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final / "root"


def _build_root(opts: BuildOptions, log: Callable[[str], None]) -> Path:
    """The root tree with the kernel: the debootstrapped tree plus the kernel flavour."""
    final = opts.output / f"base-{base_key(opts)}"
    if (final / "root").is_dir() and not opts.force:
        return final / "root"
    bootstrapped = _debootstrap(opts, log)
    work = Path(tempfile.mkdtemp(prefix=".base-", dir=opts.output))
    root = work / "root"
    try:
        _run(["cp", "-a", "--reflink=auto", str(bootstrapped), str(root)],
             "copying the debootstrapped tree")
        log(f"installing {KERNELS[opts.kernel]} in the image")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        with _chroot_mounts(root):
            _run(["chroot", str(root), "apt-get", "install", "-y", "-q",
                  "--no-install-recommends", KERNELS[opts.kernel]], "kernel install", env=env)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (root / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        # debootstrap copies the host's identity into the tree: replace it.
        (root / "etc/hostname").write_text("boinc-vm\n")
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").write_text("")
        (root / "etc/fstab").write_text("LABEL=approot / ext4 defaults 0 1\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final / "root"


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir())
    if not versions:
        raise BuildError(f"no kernel modules under {root}/lib/modules: kernel install failed")
    return versions[-1]


def _module_closure(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """(module path, dependency paths) for ``wanted`` and everything they need."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    todo = [by_name[m] for m in wanted if m in by_name]
    seen: dict[str, list[str]] = {}
    while todo:
        path = todo.pop()
        if path not in seen:
            seen[path] = deps[path]
            todo.extend(deps[path])
    return sorted(seen.items())


def _build_initrd(root: Path, kver: str, target: Path) -> None:
    """Our busybox initramfs: modules for the root disk + ``guest/initramfs-init``."""
    with tempfile.TemporaryDirectory() as tmp:
        ird = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "newroot", "etc", f"lib/modules/{kver}"):
            (ird / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / "bin/busybox", ird / "bin/busybox")
        shutil.copy2(GUEST_DIR / "initramfs-init", ird / "init")
        moddir = root / "lib/modules" / kver

        def plain(path: str) -> str:  # busybox modprobe wants uncompressed modules
            return path[:-3] if path.endswith(".xz") else path

        dep_lines = []
        for path, needs in _module_closure(moddir, INITRD_MODULES):
            data = (moddir / path).read_bytes()
            if path.endswith(".xz"):
                data = lzma.decompress(data)
            out = ird / "lib/modules" / kver / plain(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            dep_lines.append(f"{plain(path)}: {' '.join(plain(n) for n in needs)}".rstrip())
        (ird / "lib/modules" / kver / "modules.dep").write_text("\n".join(dep_lines) + "\n")
        (ird / "etc/modules-load").write_text("\n".join(INITRD_MODULES) + "\n")
        # Compressed: mke2fs -d turns runs of zero bytes into holes, and extlinux
        # fails to load a sparse initrd ("I/O error").
        with open(target, "wb") as raw_file, \
                gzip.GzipFile(fileobj=raw_file, mode="wb", mtime=0) as out_file:
            write_newc(ird, out_file)


#: What the probe initramfs prints once the kernel reached user space.
PROBE_MARKER = "BOINC-VM-PROBE-OK"


def _write_probe(root: Path, kver: str, directory: Path) -> dict[str, str]:
    """Kernel + one-line initramfs for the QEMU driver's timed KVM probe boot."""
    shutil.copy2(root / f"boot/vmlinuz-{kver}", directory / "probe-vmlinuz")
    with tempfile.TemporaryDirectory() as tmp:
        ird = Path(tmp)
        for d in ("bin", "dev"):
            (ird / d).mkdir()
        shutil.copy2(root / "bin/busybox", ird / "bin/busybox")
        shutil.copy2(GUEST_DIR / "probe-init", ird / "init")
        with open(directory / "probe-initrd", "wb") as out_file:
            write_newc(ird, out_file)
    return {"kernel": "probe-vmlinuz", "initrd": "probe-initrd", "marker": PROBE_MARKER}


def _install_guest_files(root: Path, kver: str) -> None:
    agent_dest = root / AGENT_ROOT.lstrip("/") / "vmcontroller"
    shutil.rmtree(agent_dest, ignore_errors=True)
    shutil.copytree(agent_package_dir(), agent_dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    init = root / "usr/local/sbin/appliance-init"
    init.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(GUEST_DIR / "appliance-init", init)
    init.chmod(0o755)
    for stale in (root / "boot").glob("initrd.img*"):
        stale.unlink()  # Debian's own initramfs (udev) is not used
    _build_initrd(root, kver, root / "boot/initrd.boinc")
    extlinux = root / "boot/extlinux"
    extlinux.mkdir(parents=True, exist_ok=True)
    (extlinux / "extlinux.conf").write_text(
        "SERIAL 0 115200\nDEFAULT appliance\nPROMPT 0\nTIMEOUT 0\n"
        "LABEL appliance\n"
        f"  LINUX /boot/vmlinuz-{kver}\n"
        "  INITRD /boot/initrd.boinc\n"
        f"  APPEND {KERNEL_CMDLINE}\n")


def _make_disk(root: Path, raw: Path, disk_mb: int) -> None:
    """MBR disk, one active ext4 partition labelled approot, extlinux installed."""
    with open(raw, "wb") as f:
        f.truncate(disk_mb * 1024 * 1024)
    _run(["sfdisk", "-q", str(raw)], "partitioning",
         input=f"start={PARTITION_OFFSET // 512}, type=83, bootable\n")
    fs_kib = disk_mb * 1024 - PARTITION_OFFSET // 1024
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^64bit", "-L", "approot",
          "-E", f"offset={PARTITION_OFFSET}", "-d", str(root), str(raw), f"{fs_kib}k"],
         "making the ext4 file system")
    # extlinux records the partition's start from the block device, so it must be
    # installed through a real partition device (losetup -P makes none here: partx -a).
    loop = _run(["losetup", "--find", "--show", str(raw)], "attaching the disk").stdout.strip()
    try:
        _run(["partx", "-a", loop], "adding the partition device")
        part = Path(f"{loop}p1")
        for _ in range(50):
            if part.exists():
                break
            time.sleep(0.1)
        with tempfile.TemporaryDirectory() as mnt:
            _run(["mount", str(part), mnt], "mounting the root partition")
            try:
                _run(["extlinux", "--install", f"{mnt}/boot/extlinux"], "installing extlinux")
            finally:
                _run(["umount", mnt], "unmounting the root partition")
    finally:
        subprocess.run(["partx", "-d", loop], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", loop], check=False)
    with open(raw, "r+b") as f:
        f.write(MBR_CODE.read_bytes()[:440])


def find_built(output: Path | None = None, opts: BuildOptions | None = None) -> Appliance | None:
    """The cached appliance for ``opts`` (default options), or None when it must be built."""
    opts = opts or BuildOptions(output=output or default_output())
    return find_built_key(opts.output, image_key(opts))


def find_built_key(output: Path, key: str) -> Appliance | None:
    """The appliance built with ``key`` in ``output``, or None."""
    manifest = output / f"image-{key}" / "manifest.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    return Appliance(directory=manifest.parent, key=data["key"],
                     kernel_version=data["kernel_version"],
                     disks={k: manifest.parent / v for k, v in data["disks"].items()},
                     probe_kernel=manifest.parent / data["probe"]["kernel"],
                     probe_initrd=manifest.parent / data["probe"]["initrd"])


def build(opts: BuildOptions, log: Callable[[str], None] = lambda _: None) -> Appliance:
    """Build the appliance, or return the cached one when its inputs are unchanged."""
    if os.geteuid() != 0:
        raise BuildError("building the appliance needs root (debootstrap, chroot, loop mounts)")
    with _locked(opts.output):
        if not opts.force:
            cached = find_built(opts=opts)
            if cached:
                log(f"appliance {cached.key} is up to date in {cached.directory}")
                return _add_formats(cached, opts.formats, log)
        started = time.monotonic()
        root = _build_root(opts, log)
        key = image_key(opts)
        work = Path(tempfile.mkdtemp(prefix=f".image-{key}-", dir=opts.output))
        try:
            tree = work / "root"
            log("copying the root tree")
            _run(["cp", "-a", "--reflink=auto", str(root), str(tree)], "copying the root tree")
            kver = _kernel_version(tree)
            _install_guest_files(tree, kver)
            probe = _write_probe(tree, kver, work)
            log("writing the disk")
            raw = work / "appliance.raw"
            _make_disk(tree, raw, opts.disk_mb)
            shutil.rmtree(tree)
            disks = {fmt: f"appliance.{fmt}" for fmt in ("qcow2", *opts.formats)}
            for fmt, name in disks.items():
                _convert(raw, fmt, work / name)
            raw.unlink()
            manifest = {"key": key, "kernel_version": kver, "kernel": KERNELS[opts.kernel],
                        "cmdline": KERNEL_CMDLINE, "agent_root": AGENT_ROOT, "disks": disks,
                        "probe": probe,
                        "options": {k: str(v) for k, v in asdict(opts).items()},
                        "built_seconds": round(time.monotonic() - started, 1)}
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            final = opts.output / f"image-{key}"
            if final.exists():
                shutil.rmtree(final)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        _point_current(opts.output, final)
        _prune(opts.output, final)
        log(f"appliance {key} built in {manifest['built_seconds']} s: {final}")
        return find_built_key(opts.output, key)  # type: ignore[return-value]


_CONVERT_OPTIONS = {"qcow2": [], "vdi": [], "vmdk": ["-o", "subformat=streamOptimized"]}


def _convert(source: Path, fmt: str, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    _run(["qemu-img", "convert", "-O", fmt, *_CONVERT_OPTIONS[fmt], str(source), str(partial)],
         f"converting to {fmt}")
    partial.replace(target)


def _add_formats(appliance: Appliance, formats: tuple[str, ...],
                 log: Callable[[str], None]) -> Appliance:
    """Export a cached appliance to formats it was not built with (from its qcow2)."""
    missing = [f for f in formats if f not in appliance.disks]
    if not missing:
        return appliance
    manifest_path = appliance.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for fmt in missing:
        log(f"exporting {fmt}")
        name = f"appliance.{fmt}"
        _convert(appliance.qcow2, fmt, appliance.directory / name)
        manifest["disks"][fmt] = name
    partial = manifest_path.with_suffix(".part")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    partial.replace(manifest_path)
    return find_built_key(appliance.directory.parent, appliance.key)  # type: ignore[return-value]


#: Older images kept besides the newest, and the age below which none is removed:
#: a test session or VM started a while ago may still use one.
KEEP_OLD_IMAGES = 2
KEEP_YOUNGER_THAN = 2 * 3600.0


def _prune(output: Path, keep: Path) -> None:
    images = sorted((p for p in output.glob("image-*") if p.is_dir() and p != keep),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    now = time.time()
    for old in images[KEEP_OLD_IMAGES:]:
        if now - old.stat().st_mtime > KEEP_YOUNGER_THAN:
            shutil.rmtree(old, ignore_errors=True)


def _point_current(output: Path, final: Path) -> None:
    link = output / "current"
    tmp = output / ".current.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(final.name)
    tmp.replace(link)
