"""Reason codes, findings and the decision they add up to."""

from __future__ import annotations

import pytest

from vmwrapper.diagnostics.findings import Diagnosis, Finding, Reason, Verdict


class RecordingRuntime:
    """Records ``temporary_exit`` calls (the real runtime is used in the integration tests)."""

    def __init__(self) -> None:
        self.exits: list[tuple[float, str, bool]] = []

    def temporary_exit(self, delay: float, reason: str, notice: bool = False) -> None:
        self.exits.append((delay, reason, notice))


def test_reason_codes_are_stable():
    assert {r.code for r in Reason} == {
        "ok", "kvm_unusable", "vm_extensions_disabled", "hypervisor_missing",
        "hypervisor_broken", "hypervisor_too_old", "disk_low", "memory_low"}


def test_line_names_code_check_verdict_and_detail():
    wait = Finding.wait("disk", Reason.DISK_LOW, "10 MiB free", "Free some disk.", delay=3600)
    assert wait.line() == "diagnostics: disk_low (disk, temporary exit 3600 s): 10 MiB free"
    cost = Finding.cost("virtualization", Reason.KVM_UNUSABLE, "no /dev/kvm; TCG")
    assert cost.line() == ("diagnostics: kvm_unusable (virtualization, proceeding at a cost): "
                           "no /dev/kvm; TCG")


@pytest.mark.parametrize("make, message", [
    (lambda: Finding("disk", Verdict.WAIT, Reason.DISK_LOW, "x", "y", delay=0), "delay"),
    (lambda: Finding("disk", Verdict.WAIT, Reason.DISK_LOW, "x", "y", delay=90000), "delay"),
    (lambda: Finding("disk", Verdict.WAIT, Reason.DISK_LOW, "x", "", delay=60), "advice"),
    (lambda: Finding("disk", Verdict.COST, Reason.OK, "x"), "reason code"),
])
def test_inconsistent_findings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_all_ok_proceeds_and_reports_one_line():
    lines: list[str] = []
    runtime = RecordingRuntime()
    diagnosis = Diagnosis.of([Finding.ok("disk", "5 GiB free"), Finding.ok("memory", "8 GiB")])
    assert diagnosis.act(runtime, lines.append) is True
    assert lines == ["diagnostics: ok: disk: 5 GiB free; memory: 8 GiB"]
    assert runtime.exits == []


def test_cost_proceeds_and_says_so():
    lines: list[str] = []
    diagnosis = Diagnosis.of([Finding.cost("virtualization", Reason.KVM_UNUSABLE, "TCG")])
    assert diagnosis.verdict is Verdict.COST
    assert diagnosis.act(RecordingRuntime(), lines.append) is True
    assert lines == ["diagnostics: kvm_unusable (virtualization, proceeding at a cost): TCG"]


def test_waits_exit_with_longest_delay_and_every_advice():
    lines: list[str] = []
    runtime = RecordingRuntime()
    diagnosis = Diagnosis.of([
        Finding.ok("virtualization", "KVM"),
        Finding.wait("memory", Reason.MEMORY_LOW, "100 MiB", "Close programs.", delay=300),
        Finding.wait("disk", Reason.DISK_LOW, "1 MiB", "Free disk space.", delay=3600),
    ])
    assert diagnosis.act(runtime, lines.append) is False
    assert runtime.exits == [(3600, "Close programs. Free disk space.", True)]
    assert [line.split(" ")[1] for line in lines] == ["ok:", "memory_low", "disk_low"]
