"""die_with_parent: a child started with it gets SIGTERM when its parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT
from tests.polling import wait_until
from vmwrapper.testing.processes import is_running, wait_until_gone

# The child: says SIGTERM in its file when it gets one, then exits.
CHILD = textwrap.dedent("""
    import pathlib, signal, sys, time
    flag = pathlib.Path(sys.argv[1])
    def on_term(_signum, _frame):
        flag.write_text("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    flag.write_text("ready")
    time.sleep(120)
""")

# The parent: starts the child the way the demo test does, prints its pid, waits to be killed.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from vmwrapper.testing.parentdeath import die_with_parent
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                             start_new_session=True, preexec_fn=die_with_parent())
    print(child.pid, flush=True)
    time.sleep(120)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_child_gets_sigterm_when_its_parent_is_sigkilled(tmp_path):
    flag = tmp_path / "child.flag"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(flag)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        wait_until(lambda: flag.exists() and flag.read_text() == "ready", 30, "ready child")
        parent.kill()  # SIGKILL: no handler, no finalizer, as when pytest is killed
        parent.wait(10)
        assert wait_until_gone([child], timeout=30) == [], "the child outlived its parent"
        assert flag.read_text() == "SIGTERM"
    finally:
        parent.kill()
        parent.wait(10)
        if child is not None and is_running(child):
            os.kill(child, signal.SIGKILL)
