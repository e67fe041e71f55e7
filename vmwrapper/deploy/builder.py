"""Assemble an app version directory (and optionally an anonymous-platform bundle).

Everything is checked first, then written into temporary directories beside
the destinations and renamed into place at the end: a refused request or a
failure half way (disk full, a racing deploy) leaves no partial app version
that update_versions could pick up.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmwrapper.boinc import API_VERSION
from vmwrapper.deploy.manifest import AppFile, app_info_xml, trickle_handler_daemon, version_xml
from vmwrapper.deploy.spec import AppVersionId, DeployError
from vmwrapper.progress_bar import copy_with_progress
from vmwrapper.wrapper.driveroptions import PROBE_INITRD, PROBE_KERNEL

if TYPE_CHECKING:
    from vmwrapper.job.model import JobDescription

#: Logical name the wrapper looks for its job description by (vmwrapper.app.JOB_FILES[0]).
JOB_LOGICAL_NAME = "job.xml"
#: Logical name of the main program (what the slot's link file is called).
EXECUTABLE_LOGICAL_NAME = "vmwrapper"
#: max_runtime for the daemon entry when the job sends no trickles (trickle_period 0).
DEFAULT_MAX_RUNTIME = 3600.0
#: The QEMU driver's KVM probe boot files, under the logical names the wrapper
#: looks for in the slot (vmwrapper.wrapper.driveroptions); the appliance build
#: writes them beside the image.
PROBE_FILES = (PROBE_KERNEL, PROBE_INITRD)


@dataclass(frozen=True)
class DeployRequest:
    """Everything ``vmwrapper deploy`` was asked to do."""

    version: AppVersionId
    job: pathlib.Path
    image: pathlib.Path
    executable: pathlib.Path
    project_dir: pathlib.Path
    compress: bool = False
    anonymous_platform: pathlib.Path | None = None
    #: Where the KVM probe files are; None: beside the image, shipped when they are there.
    probe_dir: pathlib.Path | None = None


@dataclass(frozen=True)
class DeployResult:
    """What was written, the config.xml entry to print, and notes for the admin."""

    version_dir: pathlib.Path
    files: tuple[AppFile, ...]
    daemon_entry: str
    bundle_dir: pathlib.Path | None = None
    notes: tuple[str, ...] = ()


def plan_files(request: DeployRequest, image_logical_name: str,
               probe_names: tuple[str, ...] = ()) -> tuple[AppFile, ...]:
    """The app version's files: executable (main program), job.xml, the sticky image,
    then the KVM probe files named in *probe_names*."""
    v = request.version
    image_suffix = "".join(request.image.suffixes[-1:])
    image_stem = image_logical_name[: len(image_logical_name) - len(image_suffix)] \
        if image_suffix and image_logical_name.endswith(image_suffix) else image_logical_name
    return (
        AppFile(v.physical_name(EXECUTABLE_LOGICAL_NAME), EXECUTABLE_LOGICAL_NAME,
                main_program=True, executable=True),
        AppFile(v.physical_name("job", ".xml"), JOB_LOGICAL_NAME),
        AppFile(v.physical_name(image_stem, image_suffix), image_logical_name,
                sticky=True, gzip=request.compress),
        *(AppFile(v.physical_name(name), name) for name in probe_names),
    )


def _may_use_qemu(job: JobDescription) -> bool:
    from vmwrapper.job.load import candidate_drivers  # noqa: PLC0415 - only deploy needs it

    return "qemu" in candidate_drivers(job)


def probe_sources(request: DeployRequest, job: JobDescription) -> dict[str, pathlib.Path]:
    """The KVM probe files to ship, by logical name; {} when there are none to ship.

    The deployed wrapper tries KVM only after booting these under it (some hosts
    open /dev/kvm and then hang); without them it runs QEMU with TCG, which
    works everywhere but slowly. Only a job that may run under QEMU needs them.

    :raises DeployError: ``--probe-dir`` was given and lacks one of them.
    """
    if not _may_use_qemu(job):
        return {}
    directory = request.probe_dir or request.image.parent
    found = {name: directory / name for name in PROBE_FILES}
    missing = [name for name, path in found.items() if not path.is_file()]
    if not missing:
        return found
    if request.probe_dir is not None:
        raise DeployError(
            f"--probe-dir {str(directory)!r} has no {' or '.join(missing)} (`vmwrapper appliance "
            "build` writes both beside the image)")
    return {}


def _load_job(path: pathlib.Path) -> JobDescription:
    from vmwrapper.job.issues import JobFileError  # noqa: PLC0415 - only deploy needs it
    from vmwrapper.job.load import load_job  # noqa: PLC0415

    _check_file("--job", path, "see job.xml in the source tree for a sample")
    try:
        return load_job(path).job
    except JobFileError as exc:
        problems = "\n  ".join(str(issue) for issue in exc.errors)
        raise DeployError(
            f"--job {str(path)!r} is not a valid job description "
            f"(check it with `vmwrapper check-job {path}`):\n  {problems}"
        ) from None


def _check_file(option: str, path: pathlib.Path, how_to_make: str) -> None:
    if not path.exists():
        raise DeployError(f"{option} {str(path)!r}: no such file ({how_to_make})")
    if not path.is_file():
        raise DeployError(f"{option} {str(path)!r} is not a regular file")


def _check_inputs(request: DeployRequest) -> None:
    _check_file("--image", request.image, "build one with `vmwrapper appliance build`")
    if request.image.stat().st_size == 0:
        raise DeployError(f"--image {str(request.image)!r} is empty")
    exe = request.executable
    _check_file("--executable", exe, "build it with `vmwrapper build-exe`")
    if not os.access(exe, os.X_OK):
        raise DeployError(f"--executable {str(exe)!r} is not executable (chmod +x it)")
    if not request.project_dir.is_dir():
        raise DeployError(f"--project-dir {str(request.project_dir)!r} is not a directory")


def _check_free(path: pathlib.Path, what: str) -> None:
    if path.exists():
        raise DeployError(
            f"{what} {str(path)!r} already exists: BOINC files are immutable, so release a new "
            "version number instead of overwriting (or delete it if it was never published)"
        )


def max_runtime_for(job: JobDescription) -> float:
    """CPU seconds one trickle may be credited for: trickle period x the VM's CPUs."""
    from vmwrapper.job.flags import vm_cpus  # noqa: PLC0415

    if job.trickle_period <= 0:
        return DEFAULT_MAX_RUNTIME
    return float(job.trickle_period) * vm_cpus(job.flags)


def _copy(source: pathlib.Path, target: pathlib.Path, executable: bool) -> None:
    copy_with_progress(source, target)  # images are large: the admin sees it move
    target.chmod(0o755 if executable else 0o644)


def _link_or_copy(source: pathlib.Path, target: pathlib.Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _missing_parents(path: pathlib.Path) -> list[pathlib.Path]:
    """The ancestors of ``path`` that do not exist yet, outermost first."""
    missing = [p for p in path.parents if not p.exists()]
    return list(reversed(missing))


def _temp_dir_beside(destination: pathlib.Path) -> pathlib.Path:
    """A fresh hidden directory next to ``destination`` (same file system: rename works)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    return pathlib.Path(tempfile.mkdtemp(prefix=".deploy-", dir=destination.parent))


def deploy(request: DeployRequest, api_version: str = API_VERSION) -> DeployResult:
    """Write the app version directory (and bundle); raise DeployError without writing anything.

    :raises DeployError: a missing or invalid input, or a destination that exists.
    """
    _check_inputs(request)
    job = _load_job(request.job)
    version_dir = request.project_dir / request.version.relative_dir
    _check_free(version_dir, "app version directory")
    bundle = request.anonymous_platform
    if bundle is not None:
        _check_free(bundle, "--anonymous-platform directory")
    probes = probe_sources(request, job)
    files = plan_files(request, job.image, tuple(probes))
    sources = {f.physical_name: source for f, source in zip(
        files, (request.executable, request.job, request.image, *probes.values()), strict=True)}
    notes = () if probes or not _may_use_qemu(job) else (
        f"no KVM probe files ({', '.join(PROBE_FILES)}) beside the image: hosts will run "
        "this version under QEMU with TCG only (give --probe-dir to ship them)",)

    staged: list[tuple[pathlib.Path, pathlib.Path]] = []  # (temp dir, destination)
    placed: list[pathlib.Path] = []
    created = _missing_parents(version_dir) + (_missing_parents(bundle) if bundle else [])
    try:
        temp = _temp_dir_beside(version_dir)
        staged.append((temp, version_dir))
        for f in files:
            _copy(sources[f.physical_name], temp / f.physical_name, f.main_program)
        (temp / "version.xml").write_text(version_xml(files, api_version))
        if bundle is not None:
            bundle_temp = _temp_dir_beside(bundle)
            staged.append((bundle_temp, bundle))
            for f in files:
                _link_or_copy(temp / f.physical_name, bundle_temp / f.physical_name)
            v = request.version
            (bundle_temp / "app_info.xml").write_text(
                app_info_xml(v.app, v.version_num, v.plan_class, files, api_version))
        for temp_dir, destination in staged:
            _check_free(destination, "destination")  # a racing deploy may have made it
            temp_dir.chmod(0o755)
            os.rename(temp_dir, destination)
            placed.append(destination)
    except BaseException as exc:
        for destination in placed:
            shutil.rmtree(destination, ignore_errors=True)
        for temp_dir, _ in staged:
            shutil.rmtree(temp_dir, ignore_errors=True)
        for directory in reversed(created):  # deepest first; only if still empty
            try:
                directory.rmdir()
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise DeployError(f"could not write the app version: {exc}") from None
        raise
    return DeployResult(version_dir, files, trickle_handler_daemon(max_runtime_for(job)), bundle,
                        notes)
