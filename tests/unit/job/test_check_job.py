"""``vmwrapper check-job``: exit codes and output, through the real command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmwrapper.job.check import main

from .helpers import DATA, ROOT


def check_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmwrapper", "check-job", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_top_level_job_xml_validates():
    result = check_job("job.xml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("job.xml: a valid <vm_job> job description\n")
    assert "runs a VM under qemu or virtualbox: 1 guest task(s), 0 host task(s)" in result.stdout
    assert "  trickle_period                 3600" in result.stdout
    assert "1. line 37, in the guest: /bin/sh -c" in result.stdout


def test_a_valid_file_prints_settings_with_origins_and_warnings():
    result = check_job(str(DATA / "lhc_style_vbox_job.xml"), "--driver", "qemu",
                       "--memory_size_mb", "4096", "--nthreads", "2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "VM: 4096 MB, 2 CPU(s) (--nthreads)" in out
    assert "memory_size_mb                 4096                             --memory_size_mb" in out
    assert "vram_size_mb                   16                               default" in out
    assert "job_duration                   64800                            line 6" in out
    assert "line 32: host_port=55000, guest_port=8000, is_remote=no, nports=3" in out
    warnings = result.stderr.splitlines()
    assert len(warnings) == 5
    assert all(": warning: " in line and "qemu" in line for line in warnings)
    assert warnings[0].endswith("ignored by the qemu driver: it is VirtualBox's guest OS type; "
                                "QEMU runs any guest as configured.")
    assert warnings[0].startswith(f"{DATA / 'lhc_style_vbox_job.xml'}:4: warning: <os_name>: ")


def test_an_invalid_file_prints_every_error_and_exits_2():
    result = check_job(str(DATA / "invalid" / "many_errors.xml"), "--bogus")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    path = DATA / "invalid" / "many_errors.xml"
    assert [line.split(": error: ")[0] for line in lines[:7]] == [
        *(f"{path}:{n}" for n in (3, 4, 5, 7, 8, 11)), "command line"]
    assert all("Fix: " in line for line in lines[:7])
    assert lines[-1] == f"{path}: 7 error(s); the job would not run."


def test_json_output_for_a_valid_and_an_invalid_file():
    good = check_job("job.xml", "--json", "--trickle", "0")
    assert good.returncode == 0
    data = json.loads(good.stdout)
    assert data["ok"] is True
    assert data["settings"]["trickle_period"] == 0.0
    assert data["origins"]["trickle_period"] == "--trickle"
    assert data["origins"]["image"] == "line 15"
    assert data["origins"]["vram_size_mb"] == "default"
    assert data["settings"]["task"][0]["setenv"] == [["LC_ALL", "C"]]
    assert data["drivers_checked"] == ["qemu", "virtualbox"]
    bad = check_job(str(DATA / "invalid" / "wrong_root.xml"), "--json")
    assert bad.returncode == 2
    data = json.loads(bad.stdout)
    assert data["ok"] is False
    assert [(e["line"], e["element"]) for e in data["errors"]] == [(2, "<job>")]


def test_json_masks_the_broker_password(tmp_path, capsys):
    job = tmp_path / "job.xml"
    job.write_text("<vm_job><broker>stomp://agent:hunter2@127.0.0.1:61613</broker></vm_job>")
    assert main([str(job), "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert json.loads(out)["settings"]["broker"] == "stomp://agent:***@127.0.0.1:61613"


@pytest.mark.parametrize(("argv", "words"), [
    ([], "give the job file first"),
    (["--nthreads", "2", "job.xml"], "give the job file first"),
    (["job.xml", "--driver"], "--driver needs a value"),
    (["job.xml", "--driver", "xen"], "unknown driver 'xen'"),
])
def test_usage_errors_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err
    assert "usage: vmwrapper check-job FILE" in err


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "usage: vmwrapper check-job FILE" in capsys.readouterr().out


def test_missing_file_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "absent.xml")]) == 2
    assert "cannot be read: No such file or directory" in capsys.readouterr().err


def test_project_dir_expands_macros(capsys):
    assert main([str(DATA / "boinc_wrapper_job.xml"), "--project-dir", "/proj",
                 "--nthreads", "3"]) == 0
    out = capsys.readouterr().out
    assert "on the host: prepare --threads 3 --data /proj/tables" in out
    assert "setenv OMP_NUM_THREADS=3" in out


def test_host_only_job_summary(tmp_path, capsys):
    job = tmp_path / "job.xml"
    job.write_text("<job_desc><task><application>a</application><where>host</where></task>"
                   "</job_desc>")
    assert main([str(job)]) == 0
    assert "runs 1 host task(s) only: no VM, no broker" in capsys.readouterr().out


def test_arguments_after_passthrough_child_go_to_the_tasks(capsys):
    assert main([str(ROOT / "job.xml"), "--json", "--passthrough_child", "--driver", "x"]) == 0
    assert json.loads(capsys.readouterr().out)["flags"]["passthrough_args"] == ["--driver", "x"]
