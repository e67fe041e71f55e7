"""Agent settings: the keys agreed with the appliance, validation, and lookup order."""

from __future__ import annotations

import json

import pytest

from vmcontroller.guest.config import AgentConfig, ConfigError, find_config_path, load_config

GOOD = {
    "broker_host": "10.0.2.2", "broker_port": 61613, "login": "vm-a", "passcode": "s3cret",
    "vm_id": "a", "work_dir": "/var/lib/boinc-vm/work", "heartbeat_interval": 10.0,
}  # fmt: skip


def test_the_appliance_keys_load(tmp_path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(GOOD))
    config = load_config(str(path))
    assert config.broker_port == 61613 and config.vhost == "/"


def test_the_appliance_writes_exactly_keys_we_read():
    from vmwrapper.appliance.userdata import AgentConfig as ApplianceConfig

    written = json.loads(ApplianceConfig(**{k: v for k, v in GOOD.items()}).to_json())
    assert AgentConfig.from_dict(written).vm_id == "a"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"broker_port": 0}, "broker_port"),
        ({"broker_port": "61613"}, "broker_port"),
        ({"work_dir": "relative"}, "absolute"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"login": ""}, "login"),
        ({"colour": "red"}, r"unknown key\(s\) colour"),
    ],
)
def test_bad_settings_name_the_problem(change, words):
    with pytest.raises(ConfigError, match=words):
        AgentConfig.from_dict({**GOOD, **change})


def test_missing_keys_are_listed():
    data = dict(GOOD)
    del data["passcode"], data["vm_id"]
    with pytest.raises(ConfigError, match="missing key\\(s\\) passcode, vm_id"):
        AgentConfig.from_dict(data)


def test_unreadable_or_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(str(tmp_path / "bad.json"))


def test_config_path_order(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 vmcontroller.config=/mnt/cfg/agent.json quiet\n")
    assert find_config_path("/x.json", str(cmdline)) == "/x.json"
    assert find_config_path(None, str(cmdline)) == "/mnt/cfg/agent.json"
    cmdline.write_text("console=ttyS0\n")
    with pytest.raises(ConfigError, match="--config"):
        find_config_path(None, str(cmdline))
