"""Children that die with the process that started them (Linux ``PR_SET_PDEATHSIG``).

A test that runs a long chain in its own session (the demo: BOINC client,
wrapper, QEMU) stops it in a finalizer. When pytest itself is killed
(SIGTERM from ``timeout`` or a CI runner) no finalizer runs, and the chain
would run on. With :func:`die_with_parent` as the ``preexec_fn`` the kernel
sends the child a signal the moment its parent dies, and a child that cleans
up on that signal (the demo does on SIGTERM) leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

#: ``PR_SET_PDEATHSIG`` from ``<linux/prctl.h>``.
PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets *signum* when we die.

    Call it in the parent (it loads libc and notes our pid there, so the child
    does as little as possible between fork and exec). The setting survives
    ``exec``. The kernel ties it to the *thread* that forks, so start the child
    from a thread that lives as long as the process (pytest's main thread).
    If the parent died before the child armed it, the child signals itself at
    once. Not Linux: a no-op (the child simply outlives its parent there).
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return arm
