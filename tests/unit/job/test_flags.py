"""The application's command-line flags (vboxwrapper's and BOINC wrapper's) and the macros."""

from __future__ import annotations

import pytest

from vmwrapper.job import AppFlags, JobFileError, load_job
from vmwrapper.job.flags import apply_flags, numbered_image, parse_app_flags, vm_cpus
from vmwrapper.job.macros import expand_macros, macro_values, substitute_macros

from .helpers import DATA, ROOT, parse


def test_no_flags():
    assert parse_app_flags([]) == AppFlags()


def test_every_flag_is_read():
    flags = parse_app_flags([
        "--trickle", "600", "--nthreads", "2.5", "--memory_size_mb", "4096", "--vmimage", "2",
        "--register_only", "--sporadic", "--device", "1", "--use_tstp",
        "--passthrough_child", "--events", "10", "--trickle", "x"])
    assert flags == AppFlags(trickle=600.0, nthreads=2.5, memory_size_mb=4096.0, vmimage=2,
                             register_only=True, sporadic=True, device=1, use_tstp=True,
                             passthrough_args=("--events", "10", "--trickle", "x"))


@pytest.mark.parametrize(("argv", "flag", "words"), [
    (["--lpt1"], "--lpt1", "--nthreads"),
    (["--nthreads"], "--nthreads", "needs a value"),
    (["--nthreads", "--sporadic"], "--nthreads", "needs a value"),
    (["--nthreads", "two"], "--nthreads", "not a number"),
    (["--nthreads", "0"], "--nthreads", "> 0"),
    (["--trickle", "-1"], "--trickle", ">= 0"),
    (["--vmimage", "1.5"], "--vmimage", "whole number"),
    (["--memory_size_mb=2048"], "--memory_size_mb=2048", "'--memory_size_mb 2048'"),
    (["job.xml"], "job.xml", "not a known option"),
])
def test_bad_flags_are_named_with_a_fix(argv, flag, words):
    with pytest.raises(JobFileError) as caught:
        parse_app_flags(argv)
    (error,) = caught.value.errors
    assert error.element == flag
    assert error.source == "command line" and error.line is None
    assert words in f"{error.message} {error.fix}"
    assert str(error).startswith(f"command line: error: {flag}: ")


def test_all_bad_flags_are_reported_together():
    with pytest.raises(JobFileError) as caught:
        parse_app_flags(["--bogus", "--trickle", "soon", "--nthreads", "2"])
    assert [e.element for e in caught.value.errors] == ["--bogus", "--trickle"]


def test_flags_override_the_file_and_are_recorded():
    job = parse("<memory_size_mb>1024</memory_size_mb><trickle_period>60</trickle_period>"
                "<image>vm_image.vdi</image>").job
    flags = AppFlags(trickle=0.0, memory_size_mb=4096.0, vmimage=3, nthreads=4)
    effective = apply_flags(job, flags)
    assert (effective.trickle_period, effective.memory_size_mb, effective.image) == (
        0.0, 4096.0, "vm_image_3.vdi")
    assert effective.flags is flags
    assert (job.trickle_period, job.memory_size_mb) == (60.0, 1024.0)


def test_vmimage_zero_keeps_the_image():
    job = parse("").job
    assert apply_flags(job, AppFlags(vmimage=0)).image == "vm_image.vdi"


@pytest.mark.parametrize(("image", "number", "result"), [
    ("vm_image.vdi", 2, "vm_image_2.vdi"), ("appliance.qcow2", 10, "appliance_10.qcow2"),
    ("disk", 1, "disk_1")])
def test_numbered_image(image, number, result):
    assert numbered_image(image, number) == result


def test_vm_cpus_rounds_up_and_falls_back_to_the_client():
    assert vm_cpus(AppFlags(nthreads=2.5)) == 3
    assert vm_cpus(AppFlags(), client_ncpus=4.0) == 4
    assert vm_cpus(AppFlags()) == 1


def test_load_job_reports_file_and_flag_errors_together(tmp_path):
    bad = tmp_path / "job.xml"
    bad.write_text("<vm_job>\n<boot_iso>maybe</boot_iso>\n</vm_job>\n")
    with pytest.raises(JobFileError) as caught:
        load_job(bad, ["--nthreads", "x"])
    assert [(e.source, e.element) for e in caught.value.errors] == [
        (str(bad), "<boot_iso>"), ("command line", "--nthreads")]


def test_load_job_applies_flags():
    job = load_job(ROOT / "job.xml", ["--trickle", "120", "--nthreads", "2"], "qemu").job
    assert job.trickle_period == 120.0 and job.flags.nthreads == 2.0


def test_load_job_refuses_an_unknown_driver():
    with pytest.raises(ValueError, match="valid drivers: qemu, virtualbox"):
        load_job(ROOT / "job.xml", driver="kvm")


def test_macros_are_substituted_in_command_line_setenv_and_exec_dir():
    job = load_job(DATA / "boinc_wrapper_job.xml", ["--nthreads", "4", "--device", "1"]).job
    job = expand_macros(job, project_dir="/var/lib/boinc/projects/p", pwd="/var/lib/boinc/slots/3")
    prepare = job.task[1]
    assert prepare.command_line == "--threads 4 --data /var/lib/boinc/projects/p/tables"
    assert prepare.setenv == (("OMP_NUM_THREADS", "4"), ("LC_ALL", "C"))


def test_macro_values_defaults_and_gpu_device():
    job = parse("").job
    assert macro_values(job, "/p", "/s") == {"PROJECT_DIR": "/p", "NTHREADS": "1", "PWD": "/s"}
    assert macro_values(job, "/p", "/s", gpu_device_num=0)["GPU_DEVICE_NUM"] == "0"
    flagged = apply_flags(job, AppFlags(device=2))
    assert macro_values(flagged, "/p", "/s", gpu_device_num=0)["GPU_DEVICE_NUM"] == "2"


def test_unknown_macros_and_exec_dir_macros():
    values = {"PWD": "/slot", "PROJECT_DIR": "/proj"}
    assert substitute_macros("$PWD/x $HOME $PROJECT_DIR", values) == "/slot/x $HOME /proj"
    job = parse("<task><application>a</application><exec_dir>$PWD/work</exec_dir></task>").job
    assert expand_macros(job, "/proj", "/slot").task[0].exec_dir == "/slot/work"
