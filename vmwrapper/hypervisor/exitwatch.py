"""Learning that a process which is not our child has ended, without polling.

A Linux pidfd (``os.pidfd_open``, kernel >= 5.3) becomes readable when its
process exits; the reactor watches it like a socket. The VirtualBox VM process
is started by VBoxSVC, not by us, so ``processEnded`` cannot tell us.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class ExitWatch:
    """Tells when a process that is not our child ends, without polling: a Linux
    pidfd (``os.pidfd_open``, kernel >= 5.3) becomes readable at its exit, and the
    reactor watches it like a socket (Twisted ``IReadDescriptor``)."""

    def __init__(self, reactor: Any, pid: int, on_exit: Callable[[], None]) -> None:
        self.reactor = reactor
        self.fd = os.pidfd_open(pid)
        self.on_exit = on_exit
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.close()
        self.on_exit()

    def connectionLost(self, reason: Any) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "vm-exit"

    def close(self) -> None:
        if self.fd >= 0:
            self.reactor.removeReader(self)
            os.close(self.fd)
            self.fd = -1
