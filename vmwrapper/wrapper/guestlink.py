"""The real guest channel: a STOMP broker plus vmcontroller's host controller.

With ``<broker>embedded</broker>`` (the default) the wrapper runs its own
broker in a thread, on 127.0.0.1, with one random login for itself and one
for the VM; the guest reaches it at ``10.0.2.2:PORT`` through the
hypervisor's NAT. With an external STOMP URL both sides use the URL's login.

Two host-controller calls matter most to the wrapper: ``adopt_run`` (a
restored guest still runs the task command an earlier wrapper started, and
its agent re-sends output and exit status under the old request id) and
``hold_liveness`` (a guest paused on purpose sends no heartbeats and must not
be declared lost).

Security: the agent is told to obey only the host's login (``trusted_senders``)
and the host controller believes messages about this VM only from the VM's
login (``vm_logins``), so another broker user cannot command the guest or
forge its presence, heartbeats or results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint

from vmcontroller.broker.credentials import Credentials, Login, generate_credentials
from vmcontroller.broker.server import EmbeddedBroker
from vmcontroller.destinations import Role
from vmcontroller.host.controller import ExitResult, HostController
from vmcontroller.stomp.client import StompConfig, StompSession
from vmwrapper.boinc.log import log
from vmwrapper.job.broker import Broker
from vmwrapper.wrapper.channel import BrokerSettings, OutputCallback

#: The host's loopback as a guest behind QEMU or VirtualBox NAT sees it.
NAT_HOST_ADDRESS = "10.0.2.2"
#: Seconds to reach the broker before giving up (a temporary exit follows).
CONNECT_TIMEOUT = 30.0


def _credentials(vm_id: str, saved: BrokerSettings | None) -> Credentials:
    if saved is not None and {"host", "vm"} <= set(saved.logins):
        host, vm = saved.logins["host"], saved.logins["vm"]
        return Credentials([Login(host[0], host[1], Role.HOST),
                            Login(vm[0], vm[1], Role.VM, vm_id)])
    return generate_credentials([vm_id])


class GuestLink:
    """The :class:`~vmwrapper.wrapper.channel.GuestChannel` of the real wrapper.

    :param reactor: the Twisted reactor.
    :param broker: the job's broker choice.
    :param heartbeat_interval: seconds between the agent's heartbeats; the VM is
        lost after about 2.5 of them without one.
    """

    def __init__(self, reactor: Any, broker: Broker, heartbeat_interval: float = 10.0) -> None:
        self.reactor = reactor
        self.broker = broker
        self.heartbeat_interval = heartbeat_interval
        self.embedded: EmbeddedBroker | None = None
        self.controller: HostController | None = None
        self._settings = BrokerSettings()
        self._lost_callbacks: list[Callable[[str], None]] = []

    # -- setting up --------------------------------------------------------

    def open(self, vm_id: str, saved: BrokerSettings | None) -> defer.Deferred[BrokerSettings]:
        if self.broker.embedded:
            settings = self._start_embedded(vm_id, saved)
            host, port = "127.0.0.1", settings.port
            login, passcode = settings.logins["host"]
        else:
            login, passcode = self.broker.login, self.broker.passcode
            settings = BrokerSettings(0, {"host": [login, passcode], "vm": [login, passcode]})
            host, port = self.broker.host, self.broker.port
        self._settings = settings
        session = StompSession(
            TCP4ClientEndpoint(self.reactor, host, port, timeout=CONNECT_TIMEOUT),
            StompConfig(login, passcode), clock=self.reactor)
        vm_login = settings.logins["vm"][0]
        # messages about this VM are believed only from its own login (forged presence,
        # heartbeats or results from another login are ignored)
        self.controller = HostController(session, self.reactor, vm_logins={vm_id: vm_login})
        self.controller.add_listener(on_lost=self._lost)
        self.controller.start()
        connecting = self.controller.when_connected(fail_after=5)
        connecting.addTimeout(CONNECT_TIMEOUT, self.reactor)
        return connecting.addCallback(lambda _: settings)

    def _start_embedded(self, vm_id: str, saved: BrokerSettings | None) -> BrokerSettings:
        credentials = _credentials(vm_id, saved)
        port = saved.port if saved is not None else 0
        try:
            self.embedded = EmbeddedBroker(("127.0.0.1", port), credentials)
            _, bound = self.embedded.start()
        except OSError as exc:
            if port == 0:
                raise
            log(f"broker port {port} of the previous run is taken ({exc.strerror}); "
                "the VM will be booted afresh")
            credentials = generate_credentials([vm_id])
            self.embedded = EmbeddedBroker(("127.0.0.1", 0), credentials)
            _, bound = self.embedded.start()
        host, vm = credentials.host_login(), credentials.vm_login(vm_id)
        return BrokerSettings(bound, {"host": [host.login, host.passcode],
                                      "vm": [vm.login, vm.passcode]})

    def agent_settings(self, vm_id: str) -> dict[str, Any]:
        login, passcode = self._settings.logins["vm"]
        if self.broker.embedded:
            host, port = NAT_HOST_ADDRESS, self._settings.port
        else:
            local = self.broker.host in ("127.0.0.1", "localhost", "::1")
            host, port = (NAT_HOST_ADDRESS if local else self.broker.host), self.broker.port
        return {"broker_host": host, "broker_port": port, "login": login, "passcode": passcode,
                "vm_id": vm_id, "heartbeat_interval": self.heartbeat_interval,
                "trusted_senders": [self._settings.logins["host"][0]]}

    # -- talking to the guest ----------------------------------------------

    def _host(self) -> HostController:
        if self.controller is None:
            raise RuntimeError("the guest channel is not open")
        return self.controller

    def wait_for_hello(self, vm_id: str, timeout: float) -> defer.Deferred[Any]:
        return self._host().wait_for_hello(vm_id, timeout)

    def run(self, vm_id: str, shell: str, env: dict[str, str] | None, cwd: str | None,
            timeout: float | None, on_output: OutputCallback) -> tuple[int, defer.Deferred[Any]]:
        command = self._host().run(vm_id, shell=shell, env=env, cwd=cwd, timeout=timeout,
                                   on_output=on_output)
        return command.seq, command

    def adopt(self, vm_id: str, seq: int, on_output: OutputCallback) -> defer.Deferred[ExitResult]:
        return self._host().adopt_run(vm_id, seq, on_output)

    def kill(self, vm_id: str, seq: int) -> defer.Deferred[Any]:
        return self._host().kill(vm_id, seq)

    def put_file(self, vm_id: str, source: str, destination: str) -> defer.Deferred[Any]:
        return self._host().put_file(vm_id, source, destination)

    def get_file(self, vm_id: str, source: str, destination: str,
                 max_size: int | None = None) -> defer.Deferred[Any]:
        return self._host().get_file(vm_id, source, destination, max_size)

    def running_commands(self, vm_id: str) -> int | None:
        status = self._host().vms.get(vm_id)
        if status is None or status.last_seen is None:
            return None
        return status.running

    def hold_liveness(self, vm_id: str) -> None:
        self._host().hold_liveness(vm_id)

    def release_liveness(self, vm_id: str) -> None:
        self._host().release_liveness(vm_id)

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self._lost_callbacks.append(callback)

    def _lost(self, vm_id: str) -> None:
        for callback in list(self._lost_callbacks):
            callback(vm_id)

    def close(self) -> defer.Deferred[Any]:
        """Stop the controller (politely, at most a few seconds), then the broker."""
        stopping: defer.Deferred[Any] = defer.succeed(None)
        if self.controller is not None:
            controller, self.controller = self.controller, None
            stopping = defer.maybeDeferred(controller.stop)
            stopping.addTimeout(3.0, self.reactor)
            stopping.addErrback(lambda _: None)

        def stop_broker(_: Any) -> None:
            if self.embedded is not None:
                embedded, self.embedded = self.embedded, None
                embedded.stop()

        return stopping.addCallback(stop_broker)
