"""VBoxManage --version parsing, including distribution builds (BOINC/boinc#5553)."""

from __future__ import annotations

import pytest

from vmwrapper.hypervisor.vboxmanage import VBoxVersion, parse_version


@pytest.mark.parametrize(("text", "expected", "revision"), [
    ("7.0.14r161095\n", (7, 0, 14), 161095),
    ("7.0.14_SUSEr161095\n", (7, 0, 14), 161095),
    ("6.1.38_Debianr153438", (6, 1, 38), 153438),
    ("6.1.50r161033", (6, 1, 50), 161033),
    ("7.1.4_Ubuntur165100", (7, 1, 4), 165100),
    ("7.1.0_BETA1r164016", (7, 1, 0), 164016),
    ("4.3.40", (4, 3, 40), None),
    # A warning line before the version (vboxdrv not loaded) must not hide it.
    ("WARNING: The vboxdrv kernel module is not loaded.\n7.0.12r159484\n", (7, 0, 12), 159484),
])
def test_versions_parse(text, expected, revision):
    version = parse_version(text)
    assert (version.major, version.minor, version.build) == expected
    assert version.revision == revision
    assert version.known
    assert str(version) == text.strip().splitlines()[-1]


@pytest.mark.parametrize("text", ["Unknown", "", "garbage r12"])
def test_unparsable_version_counts_as_newest(text):
    # BOINC PR #5587: "Unknown" selected pre-4.3 options; we treat it as the newest.
    version = parse_version(text)
    assert not version.known
    assert version.at_least(7, 1, 99)


def test_versions_compare_by_number_not_text():
    assert parse_version("6.1.50r1") < parse_version("7.0.2r1") < parse_version("7.0.10r1")
    assert parse_version("7.0.14_SUSEr161095").at_least(7, 0, 14)
    assert not parse_version("6.1.50r161033").at_least(7)
    assert VBoxVersion(4, 3, 0).at_least(4, 3)
