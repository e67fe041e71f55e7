"""The guest agent that runs inside the VM (see :mod:`vmcontroller.guest.agent`).

Run it as ``python3 -m vmcontroller.guest --config FILE`` or ``vmcontroller
agent --config FILE``.  This package imports only the standard library and
Twisted (>= 22.4), so Debian's ``python3-twisted`` is all the appliance needs.
"""
