"""vboxwrapper's guest files with a real guest: the task touches a heartbeat file, writes a
trickle trigger file, then a completion trigger file; the wrapper sends the trickle, copies
the output out and finishes with the guest's message (real QEMU, broker and agent)."""

from __future__ import annotations

import os
import signal
from xml.sax.saxutils import escape

import pytest

from tests.integration.wrapper.test_crash_restart_qemu import (
    OneRun,
    qemus_under,
    slot_with_job,
    wait_until,
)
from tests.unit.wrapper.test_driver_options import running_reactor  # noqa: F401

pytestmark = pytest.mark.qemu

TASK = ("i=0; while [ $i -lt 600 ]; do i=$((i+1)); touch alive; "
        "[ $i = 3 ] && echo '<events>42</events>' > trickle_events; "
        "[ $i = 16 ] && echo result > output.txt && printf '0\\n1\\nthe guest is done\\n' > done; "
        "sleep 1; done")
JOB = f"""<vm_job>
  <hypervisor>qemu</hypervisor>
  <trickle_period>0</trickle_period>
  <enable_shared_directory/>
  <completion_trigger_file>done</completion_trigger_file>
  <trickle_trigger_file>trickle_events</trickle_trigger_file>
  <heartbeat_filename>alive</heartbeat_filename>
  <minimum_heartbeat_interval>15</minimum_heartbeat_interval>
  <copy_from_guest><guest_path>output.txt</guest_path><logical_name>out</logical_name></copy_from_guest>
  <task><application>/bin/sh</application><command_line>-c "{escape(TASK)}"</command_line></task>
</vm_job>
"""


def test_trigger_and_heartbeat_files_in_a_real_guest(tmp_path, running_reactor):  # noqa: F811
    slot, image = slot_with_job(tmp_path, JOB)
    run = None
    try:
        run = running_reactor.call(OneRun, running_reactor.reactor, slot, image)
        wait_until(lambda: run.done.called, 300, "the job to end")
        outcome = run.done.result
        assert (outcome.status, outcome.message, outcome.notice) == (0, "the guest is done", True)
        assert run.runtime.trickles == [("trickle_events", "<events>42</events>\n")]
        assert (slot / "out").read_text() == "result\n"
        assert qemus_under(slot) == []
        assert sorted(p.name for p in slot.iterdir()) == ["job.xml", "out"]
    finally:
        for pid in qemus_under(slot):
            os.kill(pid, signal.SIGKILL)
        if run is not None and not run.done.called:
            running_reactor.call(run.wrapper.channel.close, timeout=10)
