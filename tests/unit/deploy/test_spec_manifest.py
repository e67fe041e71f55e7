"""App version naming (update_versions' rules) and the XML files an app version carries."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from vmwrapper.deploy.manifest import AppFile, app_info_xml, trickle_handler_daemon, version_xml
from vmwrapper.deploy.spec import AppVersionId, DeployError, parse_version


@pytest.mark.parametrize("text, number", [("1.00", 100), ("1.02", 102), ("7.25", 725),
                                          ("0.99", 99), ("12.10", 1210)])
def test_version_num_is_100_x_plus_yy(text, number):
    assert parse_version(text) == number


@pytest.mark.parametrize("text", ["1", "1.2", "1.234", "v1.02", "1.0a", "", "1,02", " 1.02", "-1.02"])
def test_bad_version_strings_are_refused_with_the_expected_form(text):
    with pytest.raises(DeployError, match=r"X\.YY"):
        parse_version(text)


def test_app_version_paths_and_physical_names():
    v = AppVersionId.checked("cernvm", "1.02", "x86_64-pc-linux-gnu", "vbox64")
    assert v.version_num == 102
    assert v.relative_dir == "apps/cernvm/1.02/x86_64-pc-linux-gnu__vbox64"
    assert v.physical_name("job", ".xml") == "job_1.02_x86_64-pc-linux-gnu__vbox64.xml"
    plain = AppVersionId.checked("cernvm", "1.02", "x86_64-pc-linux-gnu")
    assert plain.platform_dir == "x86_64-pc-linux-gnu"


@pytest.mark.parametrize("app, platform, plan, option", [
    ("bad name", "x86_64-pc-linux-gnu", "", "--app"),
    ("a/b", "x86_64-pc-linux-gnu", "", "--app"),
    ("app", "x86_64__pc", "", "--platform"),
    ("app", "x86_64-pc-linux-gnu", "vbox 64", "--plan-class"),
    ("app", "x86_64-pc-linux-gnu", "vbox__64", "--plan-class"),
])
def test_bad_names_are_refused_naming_the_option(app, platform, plan, option):
    with pytest.raises(DeployError, match=option):
        AppVersionId.checked(app, "1.00", platform, plan)


FILES = (
    AppFile("vmwrapper_1.02_p", "vmwrapper", main_program=True, executable=True),
    AppFile("job_1.02_p.xml", "job.xml"),
    AppFile("vm_image_1.02_p.qcow2", "vm_image.qcow2", sticky=True, gzip=True),
)


def test_version_xml_maps_logical_names_and_declares_the_api_version():
    root = ET.fromstring(version_xml(FILES, "7.20.0"))
    assert root.tag == "version"
    assert root.findtext("api_version") == "7.20.0"
    files = {f.findtext("physical_name"): f for f in root.findall("file")}
    assert {name: f.findtext("logical_name") for name, f in files.items()} == {
        "vmwrapper_1.02_p": "vmwrapper", "job_1.02_p.xml": "job.xml",
        "vm_image_1.02_p.qcow2": "vm_image.qcow2"}
    assert [n for n, f in files.items() if f.find("main_program") is not None] == ["vmwrapper_1.02_p"]
    image = files["vm_image_1.02_p.qcow2"]
    assert image.find("sticky") is not None and image.find("gzip") is not None
    assert files["job_1.02_p.xml"].find("gzip") is None


def test_version_xml_has_one_tag_per_line():
    for line in version_xml(FILES, "7.20.0").splitlines():
        assert line.strip().count("<") <= 2


def test_app_info_xml_for_the_anonymous_platform():
    root = ET.fromstring(app_info_xml("cernvm", 102, "vbox64", FILES, "7.20.0"))
    assert root.findtext("app/name") == "cernvm"
    infos = {i.findtext("name"): i for i in root.findall("file_info")}
    assert infos["vmwrapper_1.02_p"].find("executable") is not None
    assert infos["vm_image_1.02_p.qcow2"].find("sticky") is not None
    assert infos["job_1.02_p.xml"].find("executable") is None
    av = root.find("app_version")
    assert (av.findtext("version_num"), av.findtext("api_version"), av.findtext("plan_class")) == (
        "102", "7.20.0", "vbox64")
    refs = {r.findtext("file_name"): r for r in av.findall("file_ref")}
    assert refs["job_1.02_p.xml"].findtext("open_name") == "job.xml"
    assert refs["vmwrapper_1.02_p"].find("main_program") is not None
    assert root.find("file_info/url") is None  # no URLs: the files are already there


def test_manifests_need_exactly_one_main_program_and_unique_names():
    with pytest.raises(ValueError, match="one main program"):
        version_xml(FILES[1:], "7.20.0")
    with pytest.raises(ValueError, match="unique"):
        app_info_xml("a", 100, "", (*FILES, FILES[1]), "7.20.0")


def test_daemon_entry_runs_trickle_handler_with_the_cap():
    root = ET.fromstring(trickle_handler_daemon(7200))
    assert root.findtext("cmd") == "trickle_handler --variety cpu_time --max_runtime 7200"
    with pytest.raises(ValueError):
        trickle_handler_daemon(0)
