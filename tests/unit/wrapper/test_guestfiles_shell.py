"""The watcher's guest commands (``stat`` for the heartbeat mtime, ``rm`` after a trigger)
run by a real /bin/sh in a directory standing in for the agent's work dir: the fake guest in
``test_guestfiles`` only pattern-matches them, this checks that they work."""

from __future__ import annotations

import os
import pathlib
import subprocess

from twisted.internet import defer

from vmcontroller.host.controller import ExitResult
from vmwrapper.wrapper.guestfiles import GuestFileWatcher


class ShellChannel:
    """Runs each command with /bin/sh in *work_dir*, like the agent would."""

    def __init__(self, work_dir: pathlib.Path) -> None:
        self.work_dir = work_dir

    def run(self, vm_id, shell, env, cwd, timeout, on_output):
        done = subprocess.run(["/bin/sh", "-c", shell], cwd=self.work_dir, capture_output=True,
                              timeout=timeout, check=False)
        if done.stdout:
            on_output("stdout", done.stdout)
        return 1, defer.succeed(ExitResult(done.returncode, None, {}, 0.0))


class Job:
    completion_trigger_file = temporary_exit_trigger_file = ""
    trickle_trigger_file = ()
    heartbeat_filename = "heart beat"  # a space, to prove the quoting
    minimum_heartbeat_interval = 30.0


def watcher(work_dir: pathlib.Path) -> GuestFileWatcher:
    return GuestFileWatcher(job=Job(), channel=ShellChannel(work_dir), vm_id="vm",
                            scratch=lambda name: work_dir / name, send_trickle=None,
                            end=None, checkpoint=None, log=print)


def result_of(coroutine):
    return defer.ensureDeferred(coroutine).result


def test_stat_reports_the_mtime_and_a_missing_file(tmp_path):
    files = watcher(tmp_path)
    assert result_of(files._mtime("heart beat")) == (None, "")
    beat = tmp_path / "heart beat"
    beat.write_text("")
    os.utime(beat, (1_700_000_000, 1_700_000_000))
    assert result_of(files._mtime("heart beat")) == ("1700000000", "")


def test_rm_deletes_the_file_and_tolerates_its_absence(tmp_path):
    files = watcher(tmp_path)
    (tmp_path / "-trigger; echo x").write_text("0\n")
    result_of(files._remove("-trigger; echo x"))
    assert list(tmp_path.iterdir()) == []
    result_of(files._remove("-trigger; echo x"))
