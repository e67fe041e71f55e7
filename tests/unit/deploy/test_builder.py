"""``vmwrapper deploy``: the app version directory, the bundle, and refusals that write nothing."""

from __future__ import annotations

import os
import pathlib
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import ROOT
from vmwrapper.deploy import builder, cli
from vmwrapper.deploy.builder import DeployRequest, deploy
from vmwrapper.deploy.spec import AppVersionId, DeployError

SAMPLE_JOB = ROOT / "job.xml"
VERSION_DIR = "apps/cernvm/1.02/x86_64-pc-linux-gnu__vbox64"


@pytest.fixture
def inputs(tmp_path):
    image = tmp_path / "in" / "appliance.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"QFI\xfb" + bytes(range(256)) * 8)
    exe = tmp_path / "in" / "vmwrapper"
    exe.write_bytes(b"#!/bin/sh\necho fake wrapper\n")
    exe.chmod(0o755)
    project = tmp_path / "project"
    project.mkdir()
    return image, exe, project


def request(inputs, **changes) -> DeployRequest:
    image, exe, project = inputs
    fields = dict(version=AppVersionId.checked("cernvm", "1.02", "x86_64-pc-linux-gnu", "vbox64"),
                  job=SAMPLE_JOB, image=image, executable=exe, project_dir=project)
    fields.update(changes)
    return DeployRequest(**fields)


def tree(path: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_writes_the_app_version_directory_update_versions_expects(inputs):
    image, exe, project = inputs
    result = deploy(request(inputs, compress=True))
    assert result.version_dir == project / VERSION_DIR
    names = {f.logical_name: f.physical_name for f in result.files}
    assert names == {"vmwrapper": "vmwrapper_1.02_x86_64-pc-linux-gnu__vbox64",
                     "job.xml": "job_1.02_x86_64-pc-linux-gnu__vbox64.xml",
                     # the job's <image> is the image's logical name
                     "vm_image.qcow2": "vm_image_1.02_x86_64-pc-linux-gnu__vbox64.qcow2"}
    assert sorted(os.listdir(result.version_dir)) == sorted([*names.values(), "version.xml"])
    d = result.version_dir
    assert (d / names["vmwrapper"]).read_bytes() == exe.read_bytes()
    assert os.access(d / names["vmwrapper"], os.X_OK)
    assert (d / names["job.xml"]).read_bytes() == SAMPLE_JOB.read_bytes()
    assert (d / names["vm_image.qcow2"]).read_bytes() == image.read_bytes()
    root = ET.parse(d / "version.xml").getroot()
    assert root.findtext("api_version") == "7.20.0"
    image_entry = next(f for f in root.findall("file") if f.findtext("logical_name") == "vm_image.qcow2")
    assert image_entry.find("sticky") is not None and image_entry.find("gzip") is not None
    # nothing else in the project: no temporary directories left behind
    assert tree(project / "apps") == sorted(
        ["cernvm", "cernvm/1.02", VERSION_DIR[len("apps/"):],
         *(f"{VERSION_DIR[len('apps/'):]}/{n}" for n in [*names.values(), "version.xml"])])


def test_anonymous_platform_bundle_has_the_same_files_and_app_info(inputs, tmp_path):
    bundle = tmp_path / "bundle"
    result = deploy(request(inputs, anonymous_platform=bundle))
    assert result.bundle_dir == bundle
    assert sorted(os.listdir(bundle)) == sorted([*(f.physical_name for f in result.files),
                                                 "app_info.xml"])
    for f in result.files:
        assert (bundle / f.physical_name).read_bytes() == (result.version_dir / f.physical_name).read_bytes()
    root = ET.parse(bundle / "app_info.xml").getroot()
    assert root.findtext("app_version/version_num") == "102"
    assert root.findtext("app_version/plan_class") == "vbox64"


def test_daemon_entry_caps_one_trickle_at_the_jobs_period(inputs):
    result = deploy(request(inputs))
    assert "trickle_handler --variety cpu_time --max_runtime 3600" in result.daemon_entry


@pytest.mark.parametrize("problem, change, message", [
    ("missing image", lambda i, t: {"image": t / "nope.qcow2"}, "--image .* no such file"),
    ("image is a dir", lambda i, t: {"image": t}, "--image .* is not a regular file"),
    ("empty image", lambda i, t: {"image": _empty(t)}, "--image .* is empty"),
    ("missing job", lambda i, t: {"job": t / "nope.xml"}, "--job .* no such file"),
    ("invalid job", lambda i, t: {"job": _bad_job(t)}, "not a valid job description"),
    ("missing exe", lambda i, t: {"executable": t / "nope"}, "--executable .* no such file"),
    ("exe not executable", lambda i, t: {"executable": _plain(t)}, "not executable"),
    ("no project dir", lambda i, t: {"project_dir": t / "none"}, "not a directory"),
])
def test_bad_inputs_are_refused_and_nothing_is_written(inputs, tmp_path, problem, change, message):
    project = inputs[2]
    with pytest.raises(DeployError, match=message):
        deploy(request(inputs, anonymous_platform=tmp_path / "bundle", **change(inputs, tmp_path)))
    assert tree(project) == []
    assert not (tmp_path / "bundle").exists()


def _empty(tmp: pathlib.Path) -> pathlib.Path:
    (tmp / "empty.qcow2").write_bytes(b"")
    return tmp / "empty.qcow2"


def _bad_job(tmp: pathlib.Path) -> pathlib.Path:
    (tmp / "bad.xml").write_text("<vm_job><memory_size_mb>lots</memory_size_mb></vm_job>\n")
    return tmp / "bad.xml"


def _plain(tmp: pathlib.Path) -> pathlib.Path:
    (tmp / "plain").write_text("not executable")
    return tmp / "plain"


def test_an_existing_version_is_never_overwritten(inputs):
    first = deploy(request(inputs))
    before = {p: p.read_bytes() for p in first.version_dir.iterdir()}
    with pytest.raises(DeployError, match="already exists.*new version number"):
        deploy(request(inputs, image=inputs[1]))
    assert {p: p.read_bytes() for p in first.version_dir.iterdir()} == before


def test_an_existing_bundle_dir_is_refused_before_anything_is_written(inputs, tmp_path):
    (tmp_path / "bundle").mkdir()
    with pytest.raises(DeployError, match="--anonymous-platform directory .* already exists"):
        deploy(request(inputs, anonymous_platform=tmp_path / "bundle"))
    assert tree(inputs[2]) == []


def test_failure_half_way_removes_everything_already_placed(inputs, tmp_path, monkeypatch):
    renames = []
    real_rename = os.rename

    def rename_then_fail(src, dst):
        renames.append(dst)
        if len(renames) == 2:  # the version dir is in place, the bundle fails
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(builder.os, "rename", rename_then_fail)
    with pytest.raises(DeployError, match="No space left"):
        deploy(request(inputs, anonymous_platform=tmp_path / "out" / "bundle"))
    assert tree(inputs[2]) == []
    assert not (tmp_path / "out").exists()


def test_cli_prints_the_files_and_the_daemon_entry(inputs, tmp_path, capsys):
    image, exe, project = inputs
    status = cli.main(["--app", "cernvm", "--version", "1.02", "--plan-class", "vbox64",
                       "--job", str(SAMPLE_JOB), "--image", str(image), "--executable", str(exe),
                       "--project-dir", str(project), "--anonymous-platform", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert status == cli.EXIT_OK
    assert f"wrote {project / VERSION_DIR}" in out
    assert "vm_image_1.02_x86_64-pc-linux-gnu__vbox64.qcow2" in out and "sticky" in out
    assert "<cmd>trickle_handler --variety cpu_time --max_runtime 3600</cmd>" in out


def test_cli_refusal_says_why_and_that_nothing_was_written(inputs, capsys):
    image, exe, project = inputs
    status = cli.main(["--app", "cernvm", "--version", "1.2", "--job", str(SAMPLE_JOB),
                       "--image", str(image), "--executable", str(exe), "--project-dir", str(project)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_REFUSED
    assert "--version '1.2' is not a version of the form X.YY" in err
    assert "nothing was written" in err
    assert tree(project) == []
