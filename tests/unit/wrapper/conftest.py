"""A slot, a job file and the wrapper's state machine wired to the test doubles in ``fakes``."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import task

from tests.unit.wrapper.fakes import FakeChannel, FakeDriver, FakeRuntime, Script
from vmwrapper.job.load import load_job
from vmwrapper.wrapper.machine import VMSettings, Wrapper
from vmwrapper.wrapper.slot import SlotLayout

JOB_XML = """<vm_job>
  <trickle_period>{trickle_period}</trickle_period>
  <minimum_checkpoint_interval>{checkpoint_interval}</minimum_checkpoint_interval>
  <boot_timeout>{boot_timeout}</boot_timeout>
  <copy_to_guest><logical_name>in</logical_name><guest_path>input.txt</guest_path></copy_to_guest>
  <copy_from_guest><guest_path>output.txt</guest_path><logical_name>out</logical_name></copy_from_guest>
  <task>
    <application>/bin/sh</application>
    <command_line>-c "compute"</command_line>
    <fraction_done_filename>progress</fraction_done_filename>
  </task>
</vm_job>
"""


@dataclass
class Run:
    """One wrapper run over a slot; ``disks`` carries the VM's checkpoint to the next run."""

    clock: task.Clock
    driver: FakeDriver
    channel: FakeChannel
    runtime: FakeRuntime
    wrapper: Wrapper
    layout: SlotLayout
    exits: list[int]
    config_disks: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> Any:
        return self.wrapper.run()

    def advance(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)


@dataclass
class Slot:
    """A slot directory with link files like the client writes, and the project's files."""

    root: pathlib.Path
    disks: dict[str, Any] = field(default_factory=dict)

    @property
    def slot_dir(self) -> pathlib.Path:
        return self.root / "slots" / "0"

    @property
    def output(self) -> pathlib.Path:
        return self.root / "projects" / "p" / "wu_0_out"

    def write_job(self, **values: Any) -> pathlib.Path:
        settings = {"trickle_period": 3600, "checkpoint_interval": 600, "boot_timeout": 60}
        settings.update(values)
        path = self.slot_dir / "job.xml"
        path.write_text(JOB_XML.format(**settings))
        return path

    def run(self, scripts: dict[str, Script] | None = None, job_xml: str | None = None,
            boot_seconds: float | None = 3.0, **job_values: Any) -> Run:
        clock = task.Clock()
        if job_xml is not None:
            job_path = self.slot_dir / "job.xml"
            job_path.write_text(job_xml)
        else:
            job_path = self.write_job(**job_values)
        job = load_job(job_path).job
        driver = FakeDriver(clock, disks=self.disks)
        channel = FakeChannel(clock, driver, boot_seconds=boot_seconds, scripts=scripts)
        exits: list[int] = []
        runtime = FakeRuntime(clock, exits)
        layout = SlotLayout.at(self.slot_dir)
        disks: list[dict[str, Any]] = []

        def write_config_disk(path: pathlib.Path, settings: dict[str, Any]) -> None:
            path.write_text(repr(settings))
            disks.append(settings)

        wrapper = Wrapper(clock=clock, runtime=runtime, driver=driver, channel=channel, job=job,
                          layout=layout, vm_name="boincvm-wu_0-abc",
                          vm=VMSettings(self.root / "image.qcow2", 512, 1),
                          write_config_disk=write_config_disk, exit=exits.append,
                          log=print)
        return Run(clock, driver, channel, runtime, wrapper, layout, exits, disks)


@pytest.fixture
def slot(tmp_path: pathlib.Path) -> Slot:
    s = Slot(tmp_path)
    s.slot_dir.mkdir(parents=True)
    project = tmp_path / "projects" / "p"
    project.mkdir(parents=True)
    (project / "wu_in").write_bytes(b"b\na\nb\n")
    (s.slot_dir / "in").write_text("<soft_link>../../projects/p/wu_in</soft_link>\n")
    (s.slot_dir / "out").write_text("<soft_link>../../projects/p/wu_0_out</soft_link>\n")
    (tmp_path / "image.qcow2").write_bytes(b"image")
    return s
