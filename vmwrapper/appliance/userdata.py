"""Write the user-data disk that contextualizes one appliance VM at boot.

The disk is an ISO9660 image labelled ``cidata`` (the cloud-init NoCloud
convention; VirtualBox attaches it as a DVD, QEMU as a read-only disk), in the
spirit of CernVM's amiconfig/HEPiX contextualization: per-VM data is never
baked into the image. It holds:

* ``agent.json``: the guest agent's settings (``AgentConfig``); the appliance's
  init runs ``python3 -m vmcontroller.guest --config /run/cidata/agent.json``;
* ``meta-data``: ``instance-id: <vm_id>`` (NoCloud);
* ``prolog.sh`` (optional): a shell script the init runs before the agent, as
  HEPiX contextualization does;
* any other files the caller adds (job settings, certificates).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from vmwrapper.hypervisor.errors import HypervisorNotInstalled, InvalidSpec, OutOfDisk

VOLUME_LABEL = "cidata"
CONFIG_NAME = "agent.json"
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class AgentConfig:
    """The guest agent's settings, exactly the keys ``vmcontroller.guest`` reads.

    :param broker_host: the broker as the guest sees it (``10.0.2.2`` is the
        host's loopback under QEMU and VirtualBox NAT).
    :param broker_port: the broker's STOMP port on the host's 127.0.0.1.
    :param login: STOMP login for this VM.
    :param passcode: STOMP passcode for this VM (per VM, never baked into images).
    :param vm_id: the VM's name on the broker (its queues are named after it).
    :param work_dir: where the agent runs jobs inside the guest.
    :param heartbeat_interval: seconds between the agent's heartbeats.
    :param trusted_senders: broker logins whose requests the agent obeys (the host's);
        None: any login the broker lets through.
    """

    broker_host: str
    broker_port: int
    login: str
    passcode: str
    vm_id: str
    work_dir: str = "/var/lib/boinc-vm/work"
    heartbeat_interval: float = 10.0
    trusted_senders: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.broker_port, int) or not 1 <= self.broker_port <= 65535:
            raise InvalidSpec(f"broker_port={self.broker_port!r} is not a port number 1-65535")
        if not self.broker_host:
            raise InvalidSpec("broker_host is empty")
        if not _FILE_NAME_RE.match(self.vm_id):
            raise InvalidSpec(f"vm_id {self.vm_id!r} must be 1-64 letters, digits or '_.-'")
        if not self.work_dir.startswith("/"):
            raise InvalidSpec(f"work_dir {self.work_dir!r} must be an absolute guest path")
        if not self.heartbeat_interval > 0:
            raise InvalidSpec(f"heartbeat_interval={self.heartbeat_interval!r} must be > 0")

    def to_json(self) -> str:
        """The ``agent.json`` text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def write_config_disk(target: Path, config: AgentConfig | None,
                      files: dict[str, bytes | str] | None = None,
                      prolog: str | None = None) -> Path:
    """Write the user-data ISO to ``target`` (replaced atomically) and return it.

    :param config: the agent settings; None makes a disk without ``agent.json``
        (the appliance then waits for the power button instead of running the agent).
    :param files: extra files by plain name (no directories).
    :param prolog: shell script text run by the init before the agent.
    :raises HypervisorNotInstalled: genisoimage is missing.
    :raises OutOfDisk: no room for the image.
    """
    contents: dict[str, bytes] = {}
    for name, data in (files or {}).items():
        if not _FILE_NAME_RE.match(name) or name in (CONFIG_NAME, "meta-data", "prolog.sh"):
            raise InvalidSpec(f"user-data file name {name!r} is not allowed")
        contents[name] = data.encode() if isinstance(data, str) else data
    if config is not None:
        contents[CONFIG_NAME] = config.to_json().encode()
        contents["meta-data"] = f"instance-id: {config.vm_id}\n".encode()
    if prolog is not None:
        contents["prolog.sh"] = prolog.encode()
    if shutil.which("genisoimage") is None:
        raise HypervisorNotInstalled("genisoimage is missing: it writes the VM's user-data disk")
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="cidata-") as tmp:
        for name, data in contents.items():
            (Path(tmp) / name).write_bytes(data)
        partial = target.with_name(target.name + ".part")
        proc = subprocess.run(["genisoimage", "-quiet", "-V", VOLUME_LABEL, "-J", "-r",
                               "-o", str(partial), tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            if "No space left" in proc.stderr:
                raise OutOfDisk(f"no room for the user-data disk {target}")
            raise InvalidSpec(f"genisoimage failed writing {target}: {proc.stderr.strip()}")
        partial.replace(target)
    return target
