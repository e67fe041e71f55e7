"""Appliance pieces that need no debootstrap: the cpio writer, the agent
settings agreed with the guest agent, the user-data ISO, the cache keys."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest

from vmcontroller.guest.config import AgentConfig as GuestAgentConfig
from vmwrapper.appliance import builder
from vmwrapper.appliance.cpio import write_newc
from vmwrapper.appliance.userdata import AgentConfig, write_config_disk
from vmwrapper.hypervisor.errors import InvalidSpec


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A small newc reader for the test: name -> (mode, contents)."""
    entries, pos = {}, 0
    while True:
        head = data[pos:pos + 110]
        assert head[:6] == b"070701"
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name = data[pos + 110:pos + 110 + name_size - 1].decode()
        pos = (pos + 110 + name_size + 3) & ~3
        body = data[pos:pos + size]
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body)


def test_cpio_round_trip(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_bytes(b"\x7fELF" + bytes(5000))
    (tmp_path / "bin/busybox").chmod(0o755)
    (tmp_path / "bin/sh").symlink_to("busybox")
    (tmp_path / "init").write_text("#!/bin/sh\n")
    out = io.BytesIO()
    write_newc(tmp_path, out)
    entries = _read_newc(out.getvalue())
    assert set(entries) == {"bin", "bin/busybox", "bin/sh", "init"}
    assert entries["bin/busybox"][1] == b"\x7fELF" + bytes(5000)
    assert entries["bin/busybox"][0] & 0o777 == 0o755
    assert entries["bin/sh"] == (0o120777, b"busybox")
    assert entries["bin"][0] & 0o170000 == 0o040000


def test_agent_config_has_exactly_the_keys_the_guest_agent_reads():
    ours = {f.name for f in dataclasses.fields(AgentConfig)}
    required = {f.name for f in dataclasses.fields(GuestAgentConfig)
                if f.default is dataclasses.MISSING}
    assert required <= ours <= {f.name for f in dataclasses.fields(GuestAgentConfig)}
    config = AgentConfig("10.0.2.2", 61613, "vm-a", "secret", "a")
    GuestAgentConfig(**json.loads(config.to_json()))  # the agent accepts what we write


@pytest.mark.parametrize("changes, words", [
    ({"broker_port": 0}, "broker_port"), ({"vm_id": "a b"}, "vm_id"),
    ({"work_dir": "work"}, "absolute"), ({"heartbeat_interval": 0}, "heartbeat")])
def test_agent_config_rejects_bad_values(changes, words):
    base = {"broker_host": "10.0.2.2", "broker_port": 1, "login": "l", "passcode": "p",
            "vm_id": "a"}
    with pytest.raises(InvalidSpec, match=words):
        AgentConfig(**{**base, **changes})


@pytest.mark.skipif(shutil.which("genisoimage") is None, reason="genisoimage is missing")
def test_user_data_iso_is_labelled_cidata(tmp_path):
    config = AgentConfig("10.0.2.2", 61613, "vm-a", "secret", "a")
    iso = write_config_disk(tmp_path / "ud.iso", config, files={"job.txt": "x"},
                            prolog="echo hi\n")
    data = iso.read_bytes()
    assert data[0x8001:0x8006] == b"CD001"
    assert data[0x8028:0x8028 + 6] == b"cidata"
    assert config.passcode.encode() in data and b"echo hi" in data
    assert not (tmp_path / "ud.iso.part").exists()
    with pytest.raises(InvalidSpec):
        write_config_disk(tmp_path / "bad.iso", config, files={"../evil": "x"})


def test_image_key_follows_agent_code_but_not_the_root_tree(tmp_path, monkeypatch):
    agent = tmp_path / "vmcontroller"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    monkeypatch.setattr(builder, "agent_package_dir", lambda: agent)
    opts = builder.BuildOptions(output=tmp_path / "cache")
    key, base = builder.image_key(opts), builder.base_key(opts)
    (agent / "__pycache__").mkdir()
    (agent / "__pycache__/x.pyc").write_bytes(b"junk")
    assert builder.image_key(opts) == key, "byte-code is not an input"
    (agent / "agent.py").write_text("print('v2')\n")
    assert builder.image_key(opts) != key
    assert builder.base_key(opts) == base
    generic = dataclasses.replace(opts, kernel="generic")
    assert builder.base_key(generic) != base
    assert builder.debootstrap_key(generic) == builder.debootstrap_key(opts), \
        "both kernel flavours share one debootstrap"
    assert builder.find_built(opts=opts) is None


def test_build_options_reject_unknown_values(tmp_path):
    with pytest.raises(builder.BuildError, match="valid: cloud, generic"):
        builder.BuildOptions(output=Path(tmp_path), kernel="rt")
    with pytest.raises(builder.BuildError, match="ova"):
        builder.BuildOptions(output=Path(tmp_path), formats=("ova",))


def test_prune_keeps_recent_and_the_newest_old_images(tmp_path):
    import os
    import time

    now = time.time()
    ages = {"new": 0, "a": 10, "b": 20, "c": 30, "d": 3 * 3600, "e": 4 * 3600, "f": 5 * 3600}
    for name, age in ages.items():
        path = tmp_path / f"image-{name}"
        path.mkdir()
        os.utime(path, (now - age, now - age))
    builder._prune(tmp_path, tmp_path / "image-new")
    left = sorted(p.name[6:] for p in tmp_path.glob("image-*"))
    assert left == ["a", "b", "c", "new"], "old and beyond the newest two: removed"
