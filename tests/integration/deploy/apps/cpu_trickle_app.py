#!/usr/bin/env python3
"""A BOINC app that burns some CPU, sends one vboxwrapper-style CPU-time trickle, then finishes.

The trickle is ``<variety>cpu_time</variety>`` with ``<cpu_time>X</cpu_time>``,
X = the task's CPU seconds so far (cumulative, as vboxwrapper sends since
2013). The output file ``out`` receives the same number. Used to check that
the test project server stores the trickle as BOINC's scheduler does and
that trickle_handler grants credit for it.
"""

from __future__ import annotations

import time

from twisted.internet import reactor, task

from vmwrapper.boinc.filenames import resolve_filename
from vmwrapper.boinc.runtime import BoincRuntime

#: CPU seconds to burn before the trickle.
BURN_SECONDS = 1.0


def main() -> None:
    runtime = BoincRuntime()
    runtime.init()
    runtime.start()

    def burn_then_trickle() -> None:
        end = time.process_time() + BURN_SECONDS
        while time.process_time() < end:
            pass
        cpu = runtime.current_cpu_time()
        runtime.fraction_done = 0.5
        sent = runtime.send_trickle_up("cpu_time", f"<cpu_time>{cpu:f}</cpu_time>\n")
        sent.addCallback(lambda _: task.deferLater(reactor, 1.0, finish, cpu))

    def finish(cpu: float) -> None:
        resolve_filename(".", "out").write_text(f"{cpu:f}\n")
        runtime.fraction_done = 1.0
        runtime.finish(0)

    reactor.callWhenRunning(burn_then_trickle)
    reactor.run()


if __name__ == "__main__":
    main()
