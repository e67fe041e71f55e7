"""VBoxManageRunner: retries with doubling pauses, deadlines that kill, typed failures.

A scripted spawner plays VBoxManage (the protocol gets the output and the exit),
and a task.Clock drives the pauses and deadlines, so nothing sleeps.
"""

from __future__ import annotations

from twisted.internet import error as twisted_error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from vmwrapper.hypervisor import errors
from vmwrapper.hypervisor.vboxmanage import SessionLocked, VBoxManageRunner

LOCKED = ("VBoxManage: error: The machine 'boinc_x' is already locked for a session\n"
          "VBoxManage: error: Details: code VBOX_E_INVALID_OBJECT_STATE (0x80bb0007), "
          "component MachineWrap, interface IMachine, callee nsISupports\n")
NO_SVC = ("VBoxManage: error: Failed to create the VirtualBox object!\n"
          "VBoxManage: error: Code CO_E_SERVER_EXEC_FAILURE (0x80080005) - Server execution "
          "failed\n")


class FakeTransport:
    def __init__(self, spawner, protocol):
        self.spawner = spawner
        self.protocol = protocol
        self.signals = []

    def closeStdin(self):
        pass

    def signalProcess(self, name):
        self.signals.append(name)
        self.spawner.killed.append(self)


class ScriptedSpawner:
    """Each spawn takes the next (status, stdout, stderr) answer; None = hang."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []
        self.killed = []
        self.transports = []

    def __call__(self, protocol, executable, argv, env):
        self.calls.append((argv, env.get("VBOX_USER_HOME")))
        transport = FakeTransport(self, protocol)
        protocol.makeConnection(transport)
        self.transports.append(transport)
        answer = self.answers.pop(0)
        if answer is not None:
            status, out, err = answer
            if out:
                protocol.outReceived(out.encode())
            if err:
                protocol.errReceived(err.encode())
            reason = (twisted_error.ProcessDone(None) if status == 0
                      else twisted_error.ProcessTerminated(exitCode=status))
            protocol.processEnded(Failure(reason))
        return transport


class RunnerTests(SynchronousTestCase):
    def make(self, answers, **kwargs):
        self.clock = Clock()
        self.spawner = ScriptedSpawner(answers)
        return VBoxManageRunner(None, "/opt/VBoxManage", {"VBOX_USER_HOME": "/h"},
                                clock=self.clock, spawn=self.spawner, **kwargs)

    def test_success_passes_q_and_environment(self):
        runner = self.make([(0, "7.0.14r161095\n", "")])
        result = self.successResultOf(runner.run("--version"))
        self.assertEqual(result.stdout, "7.0.14r161095\n")
        self.assertEqual(self.spawner.calls, [(["/opt/VBoxManage", "-q", "--version"], "/h")])
        self.assertEqual(runner.trace, [(("--version",), 0)])

    def test_session_lock_retried_with_doubling_pauses_then_succeeds(self):
        runner = self.make([(1, "", LOCKED), (1, "", LOCKED), (0, "", "")])
        d = runner.run("controlvm", "boinc_x", "pause")
        self.assertEqual(len(self.spawner.calls), 1)
        self.clock.advance(0.99)
        self.assertEqual(len(self.spawner.calls), 1)  # first pause is 1 s
        self.clock.advance(0.01)
        self.assertEqual(len(self.spawner.calls), 2)
        self.clock.advance(1.99)
        self.assertEqual(len(self.spawner.calls), 2)  # second pause is 2 s
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d).status, 0)
        self.assertEqual(len(self.spawner.calls), 3)

    def test_lock_held_through_every_retry_fails_typed(self):
        runner = self.make([(1, "", LOCKED)] * 6)
        d = runner.run("controlvm", "boinc_x", "pause", doing="pause VM boinc_x")
        for pause in (1, 2, 4, 8, 16):
            self.assertNoResult(d)
            self.clock.advance(pause)
        failure = self.failureResultOf(d, SessionLocked)
        self.assertIn("pause VM boinc_x", str(failure.value))
        self.assertEqual(len(self.spawner.calls), 6)  # 1 + 5 retries, like vboxwrapper

    def test_vboxsvc_unreachable_is_retried_too(self):
        runner = self.make([(1, "", NO_SVC), (0, "ok\n", "")])
        d = runner.run("list", "hostinfo")
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d).stdout, "ok\n")

    def test_other_failures_are_not_retried(self):
        runner = self.make([(1, "", "VBoxManage: error: Invalid machine state: Paused\n"
                             "VBoxManage: error: Details: code VBOX_E_INVALID_VM_STATE "
                             "(0x80bb0002), component ConsoleWrap\n")])
        self.failureResultOf(runner.run("controlvm", "boinc_x", "pause"), errors.VMStateError)
        self.assertEqual(len(self.spawner.calls), 1)

    def test_check_false_returns_the_failed_result(self):
        runner = self.make([(1, "", "VBoxManage: error: Unknown option: --lpt1\n")])
        result = self.successResultOf(runner.run("modifyvm", "x", "--lpt1", "off", check=False))
        self.assertEqual(result.status, 1)

    def test_stuck_call_is_killed_at_its_deadline(self):
        runner = self.make([None], timeout=45)
        d = runner.run("snapshot", "boinc_x", "take", "boinc_1", doing="take snapshot")
        self.clock.advance(44.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, errors.OperationTimeout)
        self.assertIn("45 s", str(failure.value))
        self.assertEqual(self.spawner.transports[0].signals, ["KILL"])
        self.assertTrue(failure.value.transient)

    def test_per_call_timeout_overrides_default(self):
        runner = self.make([None], timeout=45)
        d = runner.run("startvm", "boinc_x", timeout=300)
        self.clock.advance(299)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, errors.OperationTimeout)

    def test_missing_executable_is_not_installed(self):
        clock = Clock()

        def spawn(*args, **kwargs):
            raise FileNotFoundError(2, "No such file or directory")

        runner = VBoxManageRunner(None, "/nope/VBoxManage", {}, clock=clock, spawn=spawn)
        failure = self.failureResultOf(runner.run("--version"), errors.HypervisorNotInstalled)
        self.assertIn("/nope/VBoxManage", str(failure.value))
