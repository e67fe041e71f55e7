"""Files written for vboxwrapper and for BOINC's wrapper are accepted unchanged."""

from __future__ import annotations

from vmwrapper.job import GuestFile, PortForward, candidate_drivers, load_job, read_job_file
from vmwrapper.job.drivers import DRIVER_SUPPORT, driver_warnings

from .helpers import DATA, ROOT, parse


def test_an_lhc_style_vbox_job_is_read_unchanged():
    loaded = read_job_file(DATA / "lhc_style_vbox_job.xml")
    job = loaded.job
    assert job.root == "vbox_job"
    assert job.os_name == "Linux26_64"
    assert job.memory_size_mb == 2048.0
    assert job.job_duration == 64800.0
    assert job.enable_cern_dataformat and job.enable_network and job.enable_shared_directory
    assert job.enable_floppyio and job.enable_isocontextualization and job.enable_cache_disk
    assert job.disable_automatic_checkpoints
    assert job.multiattach_vdi_file == "CMS_2024_01_10_prod.vdi"
    assert job.copy_to_shared == ("init_data.xml", "input")
    assert job.completion_trigger_file == "finished_1.txt"
    assert job.heartbeat_filename == "heartbeat"
    assert job.minimum_heartbeat_interval == 1200.0
    assert job.intermediate_upload_file == ("result_part.tgz",)
    assert job.trickle_trigger_file == ("trickle_payload",)
    assert job.pf_guest_port == 80
    assert job.port_forward == (PortForward(55000, 8000, False, 3),)
    # no tasks: the appliance runs its own payload, in a VM
    assert job.task == () and job.needs_vm
    # our defaults apply to what the file does not say
    assert job.trickle_period == 3600.0 and job.broker.embedded and job.hypervisor == ("auto",)
    assert loaded.warnings == []


def test_the_lhc_file_warns_under_qemu_about_virtualbox_only_options_only():
    loaded = load_job(DATA / "lhc_style_vbox_job.xml", driver="qemu")
    warned = {w.element: w.line for w in loaded.warnings}
    assert warned == {"<os_name>": 4, "<enable_remotedesktop>": 14,
                      "<vm_disk_controller_type>": 17, "<vm_disk_controller_model>": 18,
                      "<vm_network_driver>": 19}
    assert all("ignored by the qemu driver" in w.message for w in loaded.warnings)
    assert all(w.severity == "warning" for w in loaded.warnings)
    assert load_job(DATA / "lhc_style_vbox_job.xml", driver="virtualbox").warnings == []


def test_every_virtualbox_only_option_warns_under_qemu_and_not_under_virtualbox():
    body = "\n".join(f"<{name}>{value}</{name}>" for name, value in [
        ("os_name", "Linux26_64"), ("vram_size_mb", "32"), ("vm_disk_controller_type", "ide"),
        ("vm_disk_controller_model", "PIIX4"), ("vm_graphics_controller_type", "VMSVGA"),
        ("vm_network_driver", "82540EM"), ("network_bridged_mode", "1"),
        ("enable_nat_dns_host_resolver", "1"), ("enable_remotedesktop", "1"),
        ("enable_vm_savestate_usage", "1")])
    job = parse(body).job
    assert {w.element for w in driver_warnings(job, "qemu")} == {f"<{n}>" for n in DRIVER_SUPPORT}
    assert driver_warnings(job, "virtualbox") == []


def test_defaults_never_warn():
    assert driver_warnings(parse("").job, "qemu") == []


def test_a_boinc_wrapper_job_desc_with_tasks():
    job = read_job_file(DATA / "boinc_wrapper_job.xml").job
    assert job.root == "job_desc"
    assert [(t.application, t.where, t.daemon) for t in job.task] == [
        ("monitor", "host", True), ("prepare", "host", False),
        ("/opt/physics/run.sh", "guest", False), ("postprocess", "host", False)]
    monitor, prepare, run, post = job.task
    assert prepare.command_line == "--threads $NTHREADS --data $PROJECT_DIR/tables"
    assert prepare.setenv == (("OMP_NUM_THREADS", "$NTHREADS"), ("LC_ALL", "C"))
    assert (prepare.stdin_filename, prepare.stdout_filename, prepare.stderr_filename) == (
        "in", "prepare.out", "prepare.err")
    assert prepare.priority == 2 and monitor.priority == 1
    assert run.exec_dir == "work" and run.checkpoint_filename == "checkpoint.dat"
    assert run.fraction_done_filename == "fraction" and run.weight == 8.0
    assert run.time_limit == 86400.0 and run.multi_process and run.append_cmdline_args
    assert not post.forward_slashes and post.weight == 1.0
    assert [t.line for t in job.task] == [7, 12, 24, 35]
    assert [u.zipfilename for u in job.unzip_input] == [("inputs.zip",)]
    (zipped,) = job.zip_output
    assert zipped.zipfilename == "results.zip"
    assert zipped.filename == (r"^histo_.*\.root$", r"summary\.txt")
    assert job.enable_graphics_support
    assert job.needs_vm


def test_a_job_desc_task_without_where_runs_in_the_guest_with_a_warning():
    loaded = parse("<task>\n<application>worker</application>\n</task>", root="job_desc")
    assert loaded.job.task[0].where == "guest"
    (warning,) = loaded.warnings
    assert (warning.line, warning.element) == (2, "<task>")
    assert "<where>host</where>" in warning.fix


def test_a_host_only_job_needs_no_vm_and_warns_about_vm_options():
    loaded = parse("<memory_size_mb>2048</memory_size_mb>\n"
                   "<task><application>a</application><where>host</where></task>")
    assert not loaded.job.needs_vm
    (warning,) = loaded.warnings
    assert (warning.line, warning.element) == (2, "<memory_size_mb>")
    assert "no VM is started" in warning.message
    assert candidate_drivers(loaded.job, "qemu") == ()


def test_our_elements():
    job = parse("""<hypervisor>virtualbox, qemu</hypervisor>
<image>appliance.qcow2</image>
<broker>stomp+ssl://agent:s%40cret@broker.example.org</broker>
<boot_timeout>120</boot_timeout>
<trickle_period>0</trickle_period>
<copy_to_guest>in</copy_to_guest>
<copy_to_guest><logical_name>tables</logical_name><guest_path>/data/tables.db</guest_path>
</copy_to_guest>
<copy_from_guest><guest_path>out/histos.root</guest_path><optional/></copy_from_guest>
<copy_from_guest><guest_path>log.txt</guest_path><logical_name>log</logical_name>
</copy_from_guest>
<task><application>/bin/true</application></task>""").job
    assert job.hypervisor == ("virtualbox", "qemu")
    assert job.image == "appliance.qcow2"
    assert (job.broker.scheme, job.broker.host, job.broker.port) == ("stomp+ssl",
                                                                     "broker.example.org", 61614)
    assert (job.broker.login, job.broker.passcode, job.broker.tls) == ("agent", "s@cret", True)
    assert job.broker.display() == "stomp+ssl://agent:***@broker.example.org:61614"
    assert job.boot_timeout == 120.0
    assert job.trickle_period == 0.0
    assert job.copy_to_guest == (GuestFile("in", "in"), GuestFile("tables", "/data/tables.db"))
    assert job.copy_from_guest == (GuestFile("histos.root", "out/histos.root", True),
                                   GuestFile("log", "log.txt"))
    assert job.task[0].where == "guest"


def test_the_top_level_sample_job_xml_is_valid_for_every_driver():
    loaded = load_job(ROOT / "job.xml")
    assert loaded.warnings == []
    job = loaded.job
    assert job.root == "vm_job" and job.needs_vm
    assert job.task and all(task.where == "guest" for task in job.task)
    assert [f.logical_name for f in job.copy_to_guest] == ["in"]
    assert [f.logical_name for f in job.copy_from_guest] == ["out"]


def test_a_retired_vboxwrapper_element_is_ignored_with_a_warning():
    loaded = parse("<enable_gbac/>", root="vbox_job")
    (warning,) = loaded.warnings
    assert (warning.line, warning.element, warning.severity) == (2, "<enable_gbac>", "warning")
    assert "removed" in warning.message
