"""The standalone executable (PyInstaller one-file build) as a volunteer's host runs it."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT
from vmwrapper import __version__
from vmwrapper.boinc import API_VERSION
from vmwrapper.testing.fake_slot import time_to_first_status

SIZE_LIMIT = 30_000_000


def run(exe, *args, cwd=None):
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, stdin=subprocess.DEVNULL)


def test_version_names_the_wrapper_and_the_boinc_api(standalone_exe):
    done = run(standalone_exe, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"vmwrapper {__version__} (BOINC API {API_VERSION})"


def test_one_file_within_the_size_limit(standalone_exe):
    assert standalone_exe.stat().st_size <= SIZE_LIMIT


def test_check_job_on_the_sample_job(standalone_exe):
    done = run(standalone_exe, "check-job", str(ROOT / "job.xml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "job.xml: a valid <vm_job> job description" in done.stdout
    assert "image vm_image.qcow2" in done.stdout


def test_check_job_rejects_an_invalid_job(standalone_exe, tmp_path):
    bad = tmp_path / "job.xml"
    bad.write_text("<vm_job><memory_size_mb>lots</memory_size_mb></vm_job>\n")
    done = run(standalone_exe, "check-job", str(bad))
    assert done.returncode == 2
    assert "memory_size_mb" in done.stdout + done.stderr


def test_in_a_slot_it_speaks_the_boinc_api_and_reports_status(standalone_exe, tmp_path):
    """Mapped boinc_mmap_file from init_data.xml: the first app_status carries both CPU tags."""
    _, status = time_to_first_status([str(standalone_exe)], tmp_path / "slot")
    assert "<current_cpu_time>" in status and "<checkpoint_cpu_time>" in status
    assert "<fraction_done>" in status


def test_standalone_without_a_job_file_ends_with_init_failure(standalone_exe, tmp_path):
    done = run(standalone_exe, cwd=tmp_path)
    assert done.returncode == 206
    assert (tmp_path / "boinc_finish_called").read_text().startswith("206\n")
    assert "standalone_0" in done.stderr


def test_deploy_from_the_executable_ships_the_executable_itself(standalone_exe, tmp_path):
    image = tmp_path / "img.qcow2"
    image.write_bytes(b"x" * 100)
    (tmp_path / "project").mkdir()
    done = run(standalone_exe, "deploy", "--app", "cernvm", "--version", "1.00",
               "--job", str(ROOT / "job.xml"), "--image", str(image),
               "--project-dir", str(tmp_path / "project"))
    assert done.returncode == 0, done.stdout + done.stderr
    shipped = tmp_path / "project/apps/cernvm/1.00/x86_64-pc-linux-gnu/vmwrapper_1.00_x86_64-pc-linux-gnu"
    assert shipped.read_bytes() == standalone_exe.read_bytes()
    assert "<cmd>trickle_handler --variety cpu_time --max_runtime 3600</cmd>" in done.stdout
