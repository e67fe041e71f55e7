"""The probe the contract suite puts inside a guest, and the host side that hears it.

``PROBE_SCRIPT`` runs in the guest (started by the user-data ``prolog.sh``,
Debian's python3): every 0.2 s it increments a counter kept only in its memory
and sends ``{"vm", "counter", "clock"}`` as a JSON line to the host, where
``clock`` is the guest's monotonic clock. It reconnects whenever the connection
breaks (a restored guest's TCP state is rolled back).

``ProbeServer`` listens on the host's 127.0.0.1 (the guest reaches it as
10.0.2.2) and hands the reports to waiters by VM name.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from twisted.internet import defer, protocol
from twisted.protocols.basic import LineOnlyReceiver

from tests.integration.hypervisor.harness import GuestSample

PROBE_SCRIPT = """\
import json, socket, sys, time
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counter, sock = 0, None
while True:
    counter += 1
    line = json.dumps({"vm": name, "counter": counter, "clock": time.monotonic()}) + "\\n"
    try:
        if sock is None:
            sock = socket.create_connection((host, port), timeout=2)
        sock.sendall(line.encode())
    except OSError:
        if sock is not None:
            sock.close()
        sock = None
    time.sleep(0.2)
"""


def prolog(host: str, port: int, name: str) -> str:
    """The user-data ``prolog.sh`` that starts the probe in the background."""
    return (f"python3 /run/cidata/probe.py {host} {port} {name} "
            "> /dev/console 2>&1 &\n")


class _ProbeLine(LineOnlyReceiver):
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:  # noqa: N802 - Twisted API
        try:
            report = json.loads(line)
        except ValueError:
            return
        self.factory.report(report)


class ProbeServer(protocol.Factory):
    """Receives probe reports; ``next_sample`` waits for the next one from a VM."""

    protocol = _ProbeLine

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.port: Any = None
        self.samples: dict[str, list[GuestSample]] = defaultdict(list)
        self._waiters: dict[str, list[defer.Deferred[GuestSample]]] = defaultdict(list)

    def listen(self) -> int:
        self.port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return self.port.getHost().port

    def report(self, report: dict[str, Any]) -> None:
        sample = GuestSample(int(report["counter"]), float(report["clock"]),
                             self.reactor.seconds())
        name = str(report["vm"])
        self.samples[name].append(sample)
        waiters, self._waiters[name] = self._waiters[name], []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(sample)

    def next_sample(self, name: str, timeout: float) -> defer.Deferred[GuestSample]:
        waiter: defer.Deferred[GuestSample] = defer.Deferred()
        self._waiters[name].append(waiter)
        return waiter.addTimeout(timeout, self.reactor)
