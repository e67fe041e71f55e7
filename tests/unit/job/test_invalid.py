"""Invalid job files: every error names the element, its line and a fix; all are reported."""

from __future__ import annotations

import pytest

from vmwrapper.job import JobFileError, read_job_file
from vmwrapper.job.parser import parse_job
from vmwrapper.job.xmltree import MAX_JOB_FILE_BYTES

from .helpers import DATA, errors

#: (id, body starting on line 2, element named, line, words the message or fix must contain)
CASES = [
    ("unknown element, close to a known one", "<enable_netwrok/>",
     "<enable_netwrok>", 2, "did you mean <enable_network>"),
    ("unknown element, far from all", "<colour>blue</colour>", "<colour>", 2, "remove it"),
    ("unknown task element", "<task>\n<application>a</application>\n<wher>host</wher>\n</task>",
     "<wher>", 4, "did you mean <where>"),
    ("not a number", "<memory_size_mb>2GB</memory_size_mb>", "<memory_size_mb>", 2,
     "<memory_size_mb>2048</memory_size_mb>"),
    ("infinite number", "<job_duration>inf</job_duration>", "<job_duration>", 2, "finite"),
    ("negative seconds", "<job_duration>-5</job_duration>", "<job_duration>", 2, ">= 0"),
    ("zero heartbeat interval", "<minimum_heartbeat_interval>0</minimum_heartbeat_interval>",
     "<minimum_heartbeat_interval>", 2, "> 0"),
    ("bad boolean", "\n<boot_iso>yes</boot_iso>", "<boot_iso>", 3, "<boot_iso/>"),
    ("bad choice", "<vm_disk_controller_type>floppydisk</vm_disk_controller_type>",
     "<vm_disk_controller_type>", 2, "one of sata"),
    ("port out of range",
     "<port_forward><host_port>70000</host_port><guest_port>80</guest_port></port_forward>",
     "<host_port>", 2, "1 to 65535"),
    ("port forward without guest port", "<port_forward><host_port>80</host_port></port_forward>",
     "<port_forward>", 2, "add <guest_port>"),
    ("port range past 65535", "<port_forward><host_port>65535</host_port>"
     "<guest_port>80</guest_port><nports>2</nports></port_forward>", "<port_forward>", 2,
     "nports"),
    ("host port forwarded twice",
     "<port_forward><host_port>8000</host_port><guest_port>80</guest_port></port_forward>\n"
     "<port_forward><host_port>7999</host_port><guest_port>90</guest_port><nports>2</nports>"
     "</port_forward>", "<port_forward>", 3, "line 2"),
    ("single element twice", "<image>a.qcow2</image>\n<image>b.qcow2</image>", "<image>", 3,
     "first on line 2"),
    ("element with children where a value is expected",
     "<os_name><name>x</name></os_name>", "<os_name>", 2, "takes a value"),
    ("attributes", '<image format="qcow2">a.qcow2</image>', "<image>", 2, "remove the attributes"),
    ("text between elements", "<task>worker<application>a</application></task>", "<task>", 2,
     "own elements"),
    ("share_slot_dir with enable_shared_directory",
     "<enable_shared_directory/>\n<share_slot_dir/>", "<share_slot_dir>", 3, "only one"),
    ("copy_to_shared with share_slot_dir",
     "<share_slot_dir/>\n<copy_to_shared>x</copy_to_shared>", "<copy_to_shared>", 3,
     "remove <copy_to_shared>"),
    ("copy_to_shared without a shared directory", "<copy_to_shared>init_data.xml</copy_to_shared>",
     "<copy_to_shared>", 2, "add <enable_shared_directory/>"),
    ("share_project_dir with enable_scratch_directory",
     "<share_project_dir/>\n<enable_scratch_directory/>", "<share_project_dir>", 2, "only one"),
    ("heartbeat file without a shared directory", "<heartbeat_filename>hb</heartbeat_filename>",
     "<heartbeat_filename>", 2, "add <enable_shared_directory/>"),
    ("image and multiattach image", "<multiattach_vdi_file>b.vdi</multiattach_vdi_file>\n"
     "<image>a.vdi</image>", "<image>", 3, "only one"),
    ("file name escaping its directory", "<enable_shared_directory/>\n"
     "<trickle_trigger_file>../../etc/x</trickle_trigger_file>", "<trickle_trigger_file>", 3,
     "'..'"),
    ("absolute file name", "<enable_shared_directory/><copy_to_shared>/etc/passwd</copy_to_shared>",
     "<copy_to_shared>", 2, "absolute"),
    ("task without application", "<task>\n<command_line>-x</command_line>\n</task>", "<task>", 2,
     "add <application>"),
    ("task with empty application", "<task><application> </application></task>",
     "<application>", 2, "empty"),
    ("task in an unknown place", "<task><application>a</application><where>cloud</where></task>",
     "<where>", 2, "guest, host"),
    ("negative weight", "<task><application>a</application><weight>-1</weight></task>",
     "<weight>", 2, ">= 0"),
    ("weights add up to zero", "<task><application>a</application><weight>0</weight></task>",
     "<weight>", 2, "above 0"),
    ("only daemons", "<task><application>a</application><daemon/></task>", "<task>", 2,
     "drop <daemon/>"),
    ("priority out of range", "<task><application>a</application><priority>9</priority></task>",
     "<priority>", 2, "1 to 5"),
    ("setenv without =", "<task><application>a</application><setenv>PATH</setenv></task>",
     "<setenv>", 2, "NAME=value"),
    ("unknown hypervisor", "<hypervisor>qemu,xen</hypervisor>", "<hypervisor>", 2, "'xen'"),
    ("hypervisor twice", "<hypervisor>qemu qemu</hypervisor>", "<hypervisor>", 2, "twice"),
    ("auto mixed with a driver", "<hypervisor>auto,qemu</hypervisor>", "<hypervisor>", 2,
     "unknown hypervisor 'auto'"),
    ("broker scheme", "<broker>amqp://127.0.0.1:5672</broker>", "<broker>", 2, "stomp://"),
    ("broker port", "<broker>stomp://127.0.0.1:99999</broker>", "<broker>", 2, "port"),
    ("broker without host", "<broker>stomp://:61613</broker>", "<broker>", 2, "no host"),
    ("image with a directory", "<image>images/vm.qcow2</image>", "<image>", 2, "plain file name"),
    ("copy_to_guest without logical name",
     "<copy_to_guest><guest_path>/data/x</guest_path></copy_to_guest>", "<copy_to_guest>", 2,
     "add <logical_name>"),
    ("copy_from_guest without guest path",
     "<copy_from_guest><logical_name>out</logical_name></copy_from_guest>", "<copy_from_guest>", 2,
     "add <guest_path>"),
    ("guest path escaping the work directory",
     "<copy_from_guest><guest_path>../x</guest_path></copy_from_guest>", "<guest_path>", 2,
     "'..'"),
    ("two outputs with one logical name",
     "<copy_from_guest>out</copy_from_guest>\n<copy_from_guest><guest_path>a/out</guest_path>"
     "</copy_from_guest>", "<copy_from_guest>", 3, "line 2"),
    ("bad zip pattern", "<zip_output><zipfilename>r.zip</zipfilename><filename>([a-</filename>"
     "</zip_output>", "<filename>", 2, "regular expression"),
    ("boot timeout zero", "<boot_timeout>0</boot_timeout>", "<boot_timeout>", 2, "> 0"),
]


@pytest.mark.parametrize(("body", "element", "line", "words"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_invalid_case_names_the_element_the_line_and_the_fix(body, element, line, words):
    found = errors(body)
    assert [(e.element, e.line) for e in found] == [(element, line)], [str(e) for e in found]
    (error,) = found
    assert words in f"{error.message} {error.fix}"
    assert error.fix, "every error says how to fix it"
    text = str(error)
    assert text.startswith(f"job.xml:{line}: error: {element}: ")
    assert "Fix: " in text


def test_several_errors_are_reported_at_once_in_file_order():
    with pytest.raises(JobFileError) as caught:
        read_job_file(DATA / "invalid" / "many_errors.xml")
    found = [(e.line, e.element) for e in caught.value.errors]
    assert found == [
        (3, "<memory_size_mb>"),
        (4, "<enable_netwrok>"),
        (5, "<share_slot_dir>"),
        (7, "<trickle_period>"),
        (8, "<task>"),
        (11, "<broker>"),
    ]
    assert all(str(e).startswith(f"{DATA / 'invalid' / 'many_errors.xml'}:") for e in
               caught.value.errors)


@pytest.mark.parametrize("name", ["billion_laughs.xml", "external_entity.xml"])
def test_dtds_and_entities_are_refused_before_any_expansion(name):
    with pytest.raises(JobFileError) as caught:
        read_job_file(DATA / "invalid" / name)
    (error,) = caught.value.errors
    assert error.line == 2
    assert "<!DOCTYPE>" in error.message
    assert "remove the <!DOCTYPE" in error.fix


def test_malformed_xml_gives_the_line_and_column():
    with pytest.raises(JobFileError) as caught:
        parse_job(b"<vm_job>\n<image>a</image>\n<!-- a -- b -->\n</vm_job>")
    (error,) = caught.value.errors
    assert error.line == 3
    assert "column" in error.message
    assert "comments" in error.fix


def test_an_oversized_file_is_refused_without_parsing():
    data = b"<vm_job>" + b" " * MAX_JOB_FILE_BYTES + b"</vm_job>"
    with pytest.raises(JobFileError) as caught:
        parse_job(data)
    assert "at most" in caught.value.errors[0].message


def test_a_wrong_root_element_lists_the_accepted_ones():
    with pytest.raises(JobFileError) as caught:
        read_job_file(DATA / "invalid" / "wrong_root.xml")
    (error,) = caught.value.errors
    assert (error.line, error.element) == (2, "<job>")
    assert "<vm_job>, <vbox_job>, <job_desc>" in error.fix


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(JobFileError) as caught:
        read_job_file(tmp_path / "nope.xml")
    assert "cannot be read" in str(caught.value)
    assert "No such file" in str(caught.value)


def test_an_empty_file_is_malformed():
    with pytest.raises(JobFileError) as caught:
        parse_job(b"")
    assert "malformed XML" in caught.value.errors[0].message
