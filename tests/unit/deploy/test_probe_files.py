"""``vmwrapper deploy`` ships the QEMU driver's KVM probe files the deployed wrapper looks for."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from tests.unit.deploy.test_builder import SAMPLE_JOB, VERSION_DIR, inputs, request, tree  # noqa: F401
from vmwrapper.deploy import cli
from vmwrapper.deploy.builder import deploy
from vmwrapper.deploy.spec import DeployError
from vmwrapper.wrapper.driveroptions import PROBE_INITRD, PROBE_KERNEL

SUFFIX = "_1.02_x86_64-pc-linux-gnu__vbox64"


def _probe_files(directory) -> dict[str, bytes]:
    contents = {PROBE_KERNEL: b"kernel\x00" * 100, PROBE_INITRD: b"initrd\x00" * 50}
    directory.mkdir(exist_ok=True)
    for name, data in contents.items():
        (directory / name).write_bytes(data)
    return contents


def test_probe_files_beside_the_image_ship_under_the_names_the_wrapper_resolves(inputs, tmp_path):  # noqa: F811
    image = inputs[0]
    contents = _probe_files(image.parent)
    result = deploy(request(inputs, anonymous_platform=tmp_path / "bundle"))
    names = {f.logical_name: f.physical_name for f in result.files}
    assert names[PROBE_KERNEL] == f"probe-vmlinuz{SUFFIX}"
    assert names[PROBE_INITRD] == f"probe-initrd{SUFFIX}"
    assert len(names) == 5 and result.notes == ()
    for name, data in contents.items():
        assert (result.version_dir / names[name]).read_bytes() == data
        assert (tmp_path / "bundle" / names[name]).read_bytes() == data
        assert not os.access(result.version_dir / names[name], os.X_OK)
    version = ET.parse(result.version_dir / "version.xml").getroot()
    assert {(f.findtext("physical_name"), f.findtext("logical_name"))
            for f in version.findall("file")} >= {(names[n], n) for n in contents}
    app_info = ET.parse(tmp_path / "bundle" / "app_info.xml").getroot()
    refs = {(r.findtext("file_name"), r.findtext("open_name"))
            for r in app_info.findall("app_version/file_ref")}
    assert refs >= {(names[n], n) for n in contents}


def test_without_probe_files_a_qemu_job_deploys_and_the_admin_is_told(inputs, capsys):  # noqa: F811
    image, exe, project = inputs
    result = deploy(request(inputs))
    assert {f.logical_name for f in result.files} == {"vmwrapper", "job.xml", "vm_image.qcow2"}
    [note] = result.notes
    assert "no KVM probe files (probe-vmlinuz, probe-initrd)" in note and "TCG only" in note

    status = cli.main(["--app", "cernvm", "--version", "1.03", "--job", str(SAMPLE_JOB),
                       "--image", str(image), "--executable", str(exe),
                       "--project-dir", str(project)])
    assert status == cli.EXIT_OK
    assert "vmwrapper deploy: note: no KVM probe files" in capsys.readouterr().err


def test_a_virtualbox_only_job_ships_no_probe_files(inputs, tmp_path):  # noqa: F811
    _probe_files(inputs[0].parent)
    job = tmp_path / "vbox_job.xml"
    text = SAMPLE_JOB.read_text()
    assert "<hypervisor>qemu,virtualbox</hypervisor>" in text
    job.write_text(text.replace("<hypervisor>qemu,virtualbox</hypervisor>",
                                "<hypervisor>virtualbox</hypervisor>"))
    result = deploy(request(inputs, job=job))
    assert {f.logical_name for f in result.files} == {"vmwrapper", "job.xml", "vm_image.qcow2"}
    assert result.notes == ()


def test_a_probe_dir_without_them_is_refused_and_nothing_is_written(inputs, tmp_path):  # noqa: F811
    _probe_files(inputs[0].parent)  # beside the image, but the admin named another dir
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / PROBE_KERNEL).write_bytes(b"kernel")
    with pytest.raises(DeployError, match=r"--probe-dir .*probes' has no probe-initrd \("):
        deploy(request(inputs, probe_dir=tmp_path / "probes", anonymous_platform=tmp_path / "b"))
    assert tree(inputs[2]) == [] and not (tmp_path / "b").exists()


def test_cli_probe_dir_ships_them_from_there(inputs, tmp_path, capsys):  # noqa: F811
    image, exe, project = inputs
    contents = _probe_files(tmp_path / "probes")
    status = cli.main(["--app", "cernvm", "--version", "1.02", "--plan-class", "vbox64",
                       "--job", str(SAMPLE_JOB), "--image", str(image), "--executable", str(exe),
                       "--project-dir", str(project), "--probe-dir", str(tmp_path / "probes")])
    out, err = capsys.readouterr()
    assert status == cli.EXIT_OK, err
    assert f"probe-vmlinuz{SUFFIX}" in out and "logical name probe-initrd" in out
    assert "note:" not in err
    assert (project / VERSION_DIR / f"probe-initrd{SUFFIX}").read_bytes() == contents[PROBE_INITRD]
