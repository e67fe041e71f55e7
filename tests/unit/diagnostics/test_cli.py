"""``vmwrapper diagnose`` end to end through the real ``vmwrapper`` command."""

from __future__ import annotations

import os
import subprocess
import sys


def diagnose(*args, path=None):
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "vmwrapper", "diagnose", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_missing_hypervisor_would_wait(tmp_path):
    run = diagnose("--hypervisor", "qemu", "--dir", str(tmp_path), path=str(tmp_path))
    assert run.returncode == 1, run.stderr
    assert "[WAIT] hypervisor: qemu-system-x86_64 not found" in run.stdout
    assert "reason code hypervisor_missing" in run.stdout
    assert "A job would wait 3600 s" in run.stdout


def test_bad_memory_is_refused():
    run = diagnose("--memory", "10")
    assert run.returncode == 2 and "at least 64 MiB" in run.stderr
