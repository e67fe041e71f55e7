"""The real guest link tells both ends whom to believe: the agent obeys only the host's
login, the host controller believes messages about the VM only from the VM's login."""

from __future__ import annotations

import json

from tests.unit.wrapper.test_driver_options import running_reactor  # noqa: F401
from vmcontroller.guest.config import AgentConfig as GuestConfig
from vmwrapper.appliance.userdata import AgentConfig
from vmwrapper.job.broker import Broker
from vmwrapper.wrapper.guestlink import GuestLink

VM = "boincvm-wu_0-abc"


def test_embedded_broker_link_pins_the_logins(running_reactor):  # noqa: F811
    link = GuestLink(running_reactor.reactor, Broker())
    try:
        settings = running_reactor.call(link.open, VM, None, timeout=30)
        agent = link.agent_settings(VM)
        host_login, vm_login = settings.logins["host"][0], settings.logins["vm"][0]
        assert host_login != vm_login
        assert agent["trusted_senders"] == [host_login]
        assert agent["login"] == vm_login
        assert link.controller.vm_logins == {VM: vm_login}
        # what the wrapper writes to the user-data disk is what the agent accepts
        written = AgentConfig(**agent).to_json()
        assert GuestConfig.from_dict(json.loads(written)).trusted_senders == [
            host_login]
    finally:
        running_reactor.call(link.close, timeout=10)
