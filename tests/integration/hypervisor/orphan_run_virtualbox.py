"""A VirtualBox wrapper run that is about to be killed: start one VM and keep running.

``python -m tests.integration.hypervisor.orphan_run_virtualbox VBOX_USER_HOME BASE VM_DIR NAME``
creates and starts the VM through the fake VBoxManage with a fresh driver in its
own reactor, prints ``running <vm pid>`` and waits to be SIGKILLed, leaving the
VM registered and running for the contract suite's ``cleanup_stale`` test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import defer, task

from tests.fakes.vboxmanage import FAKE_VBOXMANAGE
from vmwrapper.hypervisor.base import VMSpec
from vmwrapper.hypervisor.virtualbox import VirtualBoxDriver


async def _run(reactor, argv: list[str]) -> None:
    home, base, vm_dir, name = argv[:4]
    driver = VirtualBoxDriver(reactor, vboxmanage=str(FAKE_VBOXMANAGE), vbox_user_home=home,
                              use_api=False)
    await driver.create(VMSpec(name=name, base_image=Path(base), vm_dir=Path(vm_dir),
                               memory_mb=128))
    await driver.start(name)
    print(f"running {driver._vms[name].pid}", flush=True)
    await defer.Deferred()  # until killed


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(_run(reactor, sys.argv[1:])))
