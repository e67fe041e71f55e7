"""The pilot's settings file and its merge with the command line (``copilot pilot --config``)."""

from __future__ import annotations

import json

import pytest

from vmcontroller.copilot import cli
from vmcontroller.copilot.pilotconfig import (
    DEFAULTS,
    PilotSettingsError,
    load_settings,
    merge_settings,
)

SECRET = "s3cret-passcode-123"


def write(tmp_path, data) -> str:
    path = tmp_path / "copilot.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_a_settings_file_gives_broker_login_passcode_and_slice(tmp_path):
    path = write(tmp_path, {"broker": "10.0.2.2:61613", "vhost": "pilots", "login": "vm-p1",
                            "passcode": SECRET, "slice": 40, "cores": 2})
    settings = load_settings(path)
    assert settings == {"broker": ("10.0.2.2", 61613), "vhost": "pilots", "login": "vm-p1",
                        "passcode": SECRET, "slice": 40.0, "cores": 2}


def test_flags_win_over_the_file_and_the_file_over_defaults():
    from_file = {"broker": ("10.0.2.2", 1234), "login": "vm-a", "passcode": "x", "slice": 40.0}
    flags = dict.fromkeys(DEFAULTS)
    flags.update(slice=10.0, cores=3)
    merged = merge_settings(flags, from_file)
    assert merged["slice"] == 10.0 and merged["cores"] == 3
    assert merged["broker"] == ("10.0.2.2", 1234) and merged["login"] == "vm-a"
    assert merged["vhost"] == "/" and merged["memory_mb"] == DEFAULTS["memory_mb"]


def test_no_login_anywhere_is_refused():
    with pytest.raises(PilotSettingsError, match="no broker login"):
        merge_settings(dict.fromkeys(DEFAULTS), {"passcode": "x"})


@pytest.mark.parametrize("data, words", [
    ({"broker": "10.0.2.2"}, "broker '10.0.2.2': use HOST:PORT"),
    ({"broker": "h:70000"}, "use HOST:PORT"),
    ({"slice": 0}, "slice must be a number of seconds > 0"),
    ({"slice": True}, "slice must be a number of seconds > 0"),
    ({"cores": 1.5}, "cores must be a whole number"),
    ({"login": ""}, "login must be a non-empty string"),
    ({"pasword": SECRET}, "unknown keys ['pasword']"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_settings_are_refused_naming_the_key(tmp_path, data, words):
    with pytest.raises(PilotSettingsError) as caught:
        load_settings(write(tmp_path, data))
    assert words in str(caught.value)


def test_errors_never_show_the_passcode(tmp_path):
    for data in ({"passcode": 12345678}, '{"login": "vm-a", "passcode": "' + SECRET + '",,}'):
        with pytest.raises(PilotSettingsError) as caught:
            load_settings(write(tmp_path, data))
        assert SECRET not in str(caught.value) and "12345678" not in str(caught.value)
        assert "passcode" in str(caught.value) or "not valid JSON" in str(caught.value)


def test_the_cli_reports_a_bad_settings_file_without_a_traceback(tmp_path, capsys):
    missing = str(tmp_path / "absent.json")
    assert cli.main(["pilot", "--config", missing, "--work-dir", str(tmp_path)]) == cli.EXIT_ERROR
    assert f"cannot read pilot settings {missing}" in capsys.readouterr().err
    assert cli.main(["pilot", "--work-dir", str(tmp_path)]) == cli.EXIT_ERROR
    assert "no broker login" in capsys.readouterr().err
