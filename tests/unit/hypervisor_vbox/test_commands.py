"""The VBoxManage command lines the driver builds, for VirtualBox 6.1 and 7.x.

A recording runner answers like VBoxManage (canned success output) so the tests
see exactly which commands a driver operation issues, in order.
"""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from tests.fakes.vboxmanage import FAKE_VBOXMANAGE
from vmwrapper.hypervisor import errors
from vmwrapper.hypervisor.base import PortForward, SharedFolder, VMSpec, VMState
from vmwrapper.hypervisor.vboxmanage import VBoxResult, classify
from vmwrapper.hypervisor.virtualbox import VirtualBoxDriver, vbox_vm_name

MD5_WU_1234_0 = "6673860bc99499cab1c43af60f604938"
NOT_FOUND = ("VBoxManage: error: Could not find a registered machine named 'x'\n"
             "VBoxManage: error: Details: code VBOX_E_OBJECT_NOT_FOUND (0x80bb0001), component "
             "VirtualBoxWrap, interface IVirtualBox\n")


class RecordingRunner:
    """Stands in for VBoxManageRunner: records argv, answers from ``answers``."""

    def __init__(self, version: str, answers: dict[str, tuple[int, str, str]] | None = None):
        self.version = version
        self.answers = answers or {}
        self.calls: list[tuple[str, ...]] = []
        self.env = {"VBOX_USER_HOME": "/home/v"}

    def run(self, *args, doing=None, check=True, timeout=None):
        self.calls.append(args)
        key = " ".join(args[:1] + args[2:3]) if args[0] in ("controlvm", "snapshot") else args[0]
        if args[0] == "--version":
            status, out, err = 0, self.version + "\n", ""
        elif key in self.answers:
            status, out, err = self.answers[key]
        elif args[0] == "showvminfo":
            status, out, err = 1, "", NOT_FOUND
        elif args[0] == "createvm":
            status, out, err = 0, "UUID: 11111111-2222-3333-4444-555555555555\n", ""
        elif args[:1] == ("snapshot",) and args[2] == "take":
            status, out, err = 0, ("0%...100%\nSnapshot taken. UUID: "
                                   "aaaaaaaa-0000-0000-0000-000000000003\n"), ""
        else:
            status, out, err = 0, "", ""
        result = VBoxResult(args, status, out, err)
        if status and check:
            return defer.fail(classify(result, doing or args[0]))
        return defer.succeed(result)

    def commands(self, name: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == name]


def make_driver(version: str = "7.0.14r161095", answers=None):
    driver = VirtualBoxDriver(Clock(), vboxmanage=str(FAKE_VBOXMANAGE), use_api=False)
    driver.runner = RecordingRunner(version, answers)
    return driver


@pytest.fixture
def spec(tmp_path):
    base = tmp_path / "project" / "appliance.qcow2"
    base.parent.mkdir()
    base.write_bytes(b"QFI\xfb" + bytes(508))
    shared = tmp_path / "slot" / "shared"
    shared.mkdir(parents=True)
    return VMSpec(name="wu_1234_0", base_image=base, vm_dir=tmp_path / "slot" / "vm",
                  memory_mb=1024, cpus=2, shared_folder=SharedFolder(shared, read_only=True),
                  port_forwards=(PortForward(8080, 80),))


def create(driver, spec):
    d = driver.create(spec)
    failures = []
    d.addErrback(failures.append)
    if failures:
        failures[0].raiseException()


def test_vm_name_is_boinc_plus_md5_prefix_like_vboxwrapper():
    # md5("wu_1234_0") computed independently: printf wu_1234_0 | md5sum
    assert vbox_vm_name("wu_1234_0") == "boinc_" + MD5_WU_1234_0[:16]
    assert vbox_vm_name("a") != vbox_vm_name("b")


def test_create_builds_overlay_then_vm_in_the_slot(spec):
    driver = make_driver()
    create(driver, spec)
    calls = driver.runner.calls
    name = vbox_vm_name(spec.name)
    medium = driver.runner.commands("createmedium")[0]
    # Copy-on-write: a differencing VDI over the base; the base is never attached.
    assert medium == ("createmedium", "disk", "--filename", str(spec.vm_dir / "overlay.vdi"),
                      "--diffparent", str(spec.base_image), "--format", "VDI")
    assert driver.runner.commands("createvm")[0] == (
        "createvm", "--name", name, "--basefolder", str(spec.vm_dir), "--ostype", "Linux26_64",
        "--register")
    assert [c[0] for c in calls].index("createmedium") < [c[0] for c in calls].index("createvm")
    modify = driver.runner.commands("modifyvm")[0]
    text = " ".join(modify)
    assert "--description wu_1234_0" in text
    assert "--memory 1024" in text and "--cpus 2" in text
    assert "--natpf1 pf8080,tcp,127.0.0.1,8080,,80" in text  # loopback only
    assert "--uartmode1 file " + str(spec.vm_dir / "console.log") in text
    attach = driver.runner.commands("storageattach")
    assert attach == [("storageattach", name, "--storagectl", "Hard Disk Controller", "--port",
                       "0", "--device", "0", "--type", "hdd", "--medium",
                       str(spec.vm_dir / "overlay.vdi"))]
    assert all(str(spec.base_image) not in " ".join(c) for c in attach)
    assert driver.runner.commands("sharedfolder") == [
        ("sharedfolder", "add", name, "--name", "shared", "--hostpath",
         str(spec.shared_folder.host_path), "--readonly")]
    assert (spec.vm_dir / "virtualbox-vm.json").exists()


@pytest.mark.parametrize(("version", "audio", "portcount"), [
    ("7.0.14_SUSEr161095", ("--audio-enabled", "off"), "--portcount"),
    ("7.1.4r165100", ("--audio-enabled", "off"), "--portcount"),
    ("6.1.50r161033", ("--audio", "none"), "--portcount"),
    ("4.2.16r86992", ("--audio", "none"), "--sataportcount"),
    ("Unknown", ("--audio-enabled", "off"), "--portcount"),
])
def test_version_dependent_options(spec, version, audio, portcount):
    driver = make_driver(version)
    create(driver, spec)
    modifies = driver.runner.commands("modifyvm")
    assert any(c[i:i + 2] == audio for c in modifies for i in range(2, len(c)))
    assert portcount in driver.runner.commands("storagectl")[0]


def test_optional_knobs_fall_back_to_one_call_each(spec):
    # BOINC/boinc#1501: one unknown option must not cost the whole job.
    driver = make_driver(answers={"modifyvm": (0, "", "")})
    real_run = driver.runner.run

    def run(*args, **kwargs):
        if args[0] == "modifyvm" and "--usb" in args:
            driver.runner.calls.append(args)
            result = VBoxResult(args, 2, "", "VBoxManage: error: Unknown option: --usb\n")
            return defer.succeed(result) if not kwargs.get("check", True) else defer.fail(
                classify(result, "x"))
        return real_run(*args, **kwargs)

    driver.runner.run = run
    create(driver, spec)
    optional = [c[2:] for c in driver.runner.commands("modifyvm")[1:]]
    assert optional[0] == ("--usb", "off", "--audio-enabled", "off", "--clipboard-mode",
                           "disabled", "--draganddrop", "disabled")
    assert optional[1:] == [("--usb", "off"), ("--audio-enabled", "off"),
                            ("--clipboard-mode", "disabled"), ("--draganddrop", "disabled")]


def test_network_off_means_no_nic_and_no_forwards(spec, tmp_path):
    offline = VMSpec(name="offline", base_image=spec.base_image, vm_dir=tmp_path / "off",
                     network=False, port_forwards=(PortForward(9000, 22),))
    driver = make_driver()
    create(driver, offline)
    text = " ".join(driver.runner.commands("modifyvm")[0])
    assert "--nic1 none" in text and "--natpf1" not in text


def test_iso_config_disk_is_a_dvd_plain_disk_immutable(spec, tmp_path):
    iso = tmp_path / "user-data.iso"
    iso.write_bytes(bytes(0x8001) + b"CD001" + bytes(100))
    raw = tmp_path / "user-data.img"
    raw.write_bytes(bytes(4096))
    for disk, expected in ((iso, ("--type", "dvddrive")),
                           (raw, ("--type", "hdd", "--mtype", "immutable"))):
        driver = make_driver()
        with_disk = VMSpec(name=f"c{disk.suffix[1:]}", base_image=spec.base_image,
                           vm_dir=tmp_path / f"vm{disk.suffix}", config_disk=disk)
        create(driver, with_disk)
        attach = driver.runner.commands("storageattach")[1]
        assert attach[-2:] == ("--medium", str(disk))
        assert " ".join(expected) in " ".join(attach)


def test_bad_specs_fail_before_any_command(spec, tmp_path):
    driver = make_driver()
    missing = VMSpec(name="m", base_image=tmp_path / "nope.qcow2", vm_dir=tmp_path / "m")
    with pytest.raises(errors.ImageMissing, match="nope.qcow2"):
        create(driver, missing)
    odd = VMSpec(name="o", base_image=spec.base_image, vm_dir=tmp_path / "o",
                 extra={"colour": "blue"})
    with pytest.raises(errors.InvalidSpec, match="colour.*valid: enable_nat_dns_host_resolver"):
        create(driver, odd)
    assert driver.runner.calls == []


def test_create_failure_removes_what_was_made(spec):
    driver = make_driver(answers={"storagectl": (1, "", "VBoxManage: error: boom\n")})
    with pytest.raises(errors.HypervisorFailure, match="boom"):
        create(driver, spec)
    assert not spec.vm_dir.exists() or not any(spec.vm_dir.iterdir())
    d = driver.state(spec.name)
    assert d.result is VMState.ABSENT


def test_checkpoint_pauses_snapshots_resumes_then_deletes_older_newest_first(spec):
    driver = make_driver()
    create(driver, spec)
    # The driver's clock is a Clock at 0 s, so the new snapshot is "boinc_0".
    driver.runner.answers["showvminfo"] = (0, 'VMState="running"\nUUID="u"\n', "")
    driver.runner.answers["snapshot list"] = (0, (
        "   Name: boinc_old1 (UUID: aaaaaaaa-0000-0000-0000-000000000001)\n"
        "      Name: boinc_old2 (UUID: aaaaaaaa-0000-0000-0000-000000000002)\n"
        "         Name: boinc_0 (UUID: aaaaaaaa-0000-0000-0000-000000000003) *\n"), "")
    driver.runner.calls.clear()
    checkpoint = driver.save_checkpoint(spec.name).result
    assert checkpoint.name == "boinc_0"
    steps = [" ".join(c[2:4]) if c[0] in ("controlvm", "snapshot") else c[0]
             for c in driver.runner.calls]
    # vboxwrapper: create_snapshot + cleanup_snapshots; the new snapshot exists before
    # any old one is deleted, and deletion goes newest first.
    assert steps == ["showvminfo", "pause", "take boinc_0", "resume", "list",
                     "delete aaaaaaaa-0000-0000-0000-000000000002",
                     "delete aaaaaaaa-0000-0000-0000-000000000001"]


def test_checkpoint_of_a_paused_vm_keeps_it_paused(spec):
    driver = make_driver()
    create(driver, spec)
    driver.runner.answers["showvminfo"] = (0, 'VMState="paused"\n', "")
    driver.runner.answers["snapshot list"] = (
        0, "   Name: boinc_0 (UUID: aaaaaaaa-0000-0000-0000-000000000003) *\n", "")
    driver.runner.calls.clear()
    assert driver.save_checkpoint(spec.name).result.name == "boinc_0"
    assert not driver.runner.commands("controlvm")


def test_pause_resume_are_one_call_idempotent_and_checked(spec):
    driver = make_driver()
    create(driver, spec)
    driver.runner.calls.clear()
    assert driver.pause(spec.name).result is None
    assert driver.runner.calls == [("controlvm", vbox_vm_name(spec.name), "pause")]
    # Already paused: VirtualBox refuses, the driver sees the VM is where it should be.
    driver.runner.answers["controlvm pause"] = (1, "", (
        "VBoxManage: error: Invalid machine state: Paused\nVBoxManage: error: Details: code "
        "VBOX_E_INVALID_VM_STATE (0x80bb0002), component ConsoleWrap, interface IConsole\n"))
    driver.runner.answers["showvminfo"] = (0, 'VMState="paused"\n', "")
    assert driver.pause(spec.name).result is None
    # Not running at all: a VMStateError that says what the VM is.
    driver.runner.answers["controlvm resume"] = (
        1, "", "VBoxManage: error: Machine 'x' is not currently running\n")
    driver.runner.answers["showvminfo"] = (0, 'VMState="poweroff"\n', "")
    failures = []
    driver.resume(spec.name).addErrback(failures.append)
    assert failures and failures[0].check(errors.VMStateError)
    assert "it is stopped" in str(failures[0].value)


def test_job_options_reach_vboxmanage(spec, tmp_path):
    driver = make_driver(answers={"list": (0, "Name:            eth0\nStatus:          Up\n", "")})
    chosen = VMSpec(name="opts", base_image=spec.base_image, vm_dir=tmp_path / "opts",
                    extra={"os_name": "Ubuntu_64", "vram_size_mb": 512,
                           "vm_disk_controller_type": "ide",
                           "vm_disk_controller_model": "PIIX4",
                           "vm_graphics_controller_type": "vmsvga",
                           "vm_network_driver": "virtio", "network_bridged_mode": True})
    create(driver, chosen)
    assert "Ubuntu_64" in driver.runner.commands("createvm")[0]
    required = " ".join(driver.runner.commands("modifyvm")[0])
    assert "--vram 128" in required  # clamped like vboxwrapper
    assert "--nic1 bridged --bridgeadapter1 eth0" in required
    assert "--nictype1 virtio" in required and "--natpf1" not in required
    assert "--graphicscontroller vmsvga" in " ".join(driver.runner.commands("modifyvm")[1])
    # IDE: no port count, no host I/O cache switch (SATA/SCSI/SAS only).
    assert driver.runner.commands("storagectl")[0][2:] == (
        "--name", "Hard Disk Controller", "--add", "ide", "--controller", "PIIX4")


def test_nat_dns_host_resolver(spec, tmp_path):
    driver = make_driver()
    create(driver, VMSpec(name="dns", base_image=spec.base_image, vm_dir=tmp_path / "dns",
                          extra={"enable_nat_dns_host_resolver": True}))
    assert "--natdnshostresolver1 on" in " ".join(driver.runner.commands("modifyvm")[0])


@pytest.mark.parametrize(("version", "extpack", "expected"), [
    ("7.1.4r165100", True, ["--vrde", "--vrdeaddress", "--vrde-property"]),
    ("7.0.14r161095", True, ["--vrde", "--vrdeaddress"]),
    ("7.1.4r165100", False, []),
])
def test_remote_desktop_needs_the_extension_pack(spec, tmp_path, version, extpack, expected):
    packs = ("Extension Packs: 1\nPack no. 0:   Oracle VM VirtualBox Extension Pack\n"
             "VRDE Module:  VBoxVRDP\n") if extpack else "Extension Packs: 0\n"
    driver = make_driver(version, answers={"list": (0, packs, "")})
    rdp = VMSpec(name="rdp", base_image=spec.base_image, vm_dir=tmp_path / "rdp",
                 extra={"enable_remotedesktop": True})
    create(driver, rdp)
    vrde = [c for c in driver.runner.commands("modifyvm") if "--vrde" in c]
    if not expected:
        assert vrde == [] and driver.remote_desktop_address("rdp") is None
        return
    assert all(option in vrde[0] for option in expected)
    assert ("--vrde-property" in vrde[0]) == version.startswith("7.1")
    port = vrde[0][vrde[0].index("--vrdeport") + 1]
    assert driver.remote_desktop_address("rdp") == f"127.0.0.1:{port}"


def test_savestate_usage_saves_instead_of_power_off(spec, tmp_path):
    driver = make_driver()
    saving = VMSpec(name="sv", base_image=spec.base_image, vm_dir=tmp_path / "sv",
                    extra={"enable_vm_savestate_usage": True})
    create(driver, saving)
    driver.runner.answers["showvminfo"] = (0, 'VMState="running"\n', "")
    driver.runner.calls.clear()
    assert driver.power_off("sv").result is None
    assert driver.runner.commands("controlvm") == [("controlvm", vbox_vm_name("sv"),
                                                    "savestate")]
