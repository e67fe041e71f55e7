"""A wrapper run that is about to be killed: start one VM and keep running.

``python -m tests.integration.hypervisor.orphan_run qemu BASE VM_DIR NAME [CONFIG_DISK]``
creates and starts the VM with a fresh driver in its own reactor, prints
``running <pid>`` and waits to be SIGKILLed, leaving the VM behind for the
contract suite's ``cleanup_stale`` test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import defer, task

from vmwrapper.hypervisor.base import VMSpec
from vmwrapper.hypervisor.qemu import QemuDriver


async def _run(reactor, argv: list[str]) -> None:
    kind, base, vm_dir, name = argv[:4]
    if kind != "qemu":
        raise SystemExit(f"unknown driver {kind}")
    driver = QemuDriver(reactor, accel="tcg")
    config = Path(argv[4]) if len(argv) > 4 else None
    await driver.create(VMSpec(name=name, base_image=Path(base), vm_dir=Path(vm_dir),
                               config_disk=config))
    await driver.start(name)
    print(f"running {driver.pid(name)}", flush=True)
    await defer.Deferred()  # until killed


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(_run(reactor, sys.argv[1:])))
