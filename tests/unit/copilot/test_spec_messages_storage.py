"""Job specs, Co-Pilot messages and per-job storage: validation and limits."""

from __future__ import annotations

import hashlib
import io

import pytest

from vmcontroller.copilot import messages
from vmcontroller.copilot.spec import Capabilities, JobSpec, SpecError, fits
from vmcontroller.copilot.storage import JobStorage, StorageError


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "exactly one of 'argv'"),
        ({"argv": ["a"], "shell": "b"}, "exactly one of 'argv'"),
        ({"argv": "ls"}, "argv must be a list"),
        ({"argv": ["a"], "outputs": ["../etc/passwd"]}, "invalid output pattern"),
        ({"argv": ["a"], "outputs": ["sub/out.txt"]}, "invalid output pattern"),
        ({"argv": ["a"], "inputs": ["../x"]}, "invalid input name"),
        ({"argv": ["a"], "inputs": [".hidden"]}, "invalid input name"),
        ({"argv": ["a"], "max_run_time": 0}, "max_run_time must be a number"),
        ({"argv": ["a"], "retries": 99}, "retries must be a number"),
        ({"argv": ["a"], "cores": "2"}, "cores must be a number"),
        ({"argv": ["a"], "env": {"A=B": "c"}}, "env must map"),
        ({"argv": ["a"], "comand": "typo"}, "unknown key"),
        ([], "must be a JSON object"),
    ],
)
def test_bad_job_files_get_a_clear_error(data, message):
    with pytest.raises(SpecError, match=message):
        JobSpec.from_dict(data, source="job.json")


def test_a_job_round_trips_through_its_dict():
    spec = JobSpec.from_dict({"shell": "echo hi", "outputs": ["*.root"], "inputs": ["in.dat"],
                              "cores": 2, "retries": 0, "env": {"A": "1"}})
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_fits_compares_needs_with_capabilities():
    spec = JobSpec(argv=("x",), cores=2, memory_mb=512, max_run_time=100)
    assert fits(spec, Capabilities(cores=2, memory_mb=512, max_run_time=100))
    assert not fits(spec, Capabilities(cores=1, memory_mb=4096, max_run_time=1000))
    assert not fits(spec, Capabilities(cores=4, memory_mb=4096, max_run_time=99))


def test_messages_round_trip_and_bad_ones_are_named():
    body = messages.encode("accept", job_id="j", lease_id="l")
    assert messages.decode(body)["lease_id"] == "l"
    with pytest.raises(messages.MessageError, match="unknown type"):
        messages.decode(b'{"copilot":1,"type":"runJob"}')
    with pytest.raises(messages.MessageError, match="'lease_id' missing"):
        messages.decode(b'{"copilot":1,"type":"accept","job_id":"j"}')
    with pytest.raises(messages.MessageError, match="not a Co-Pilot"):
        messages.decode(b'{"type":"hello"}')
    with pytest.raises(messages.MessageError, match="not JSON"):
        messages.decode(b"\xff")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_uploads_are_checked_and_committed_per_lease(tmp_path):
    storage = JobStorage(str(tmp_path), max_file_bytes=10, max_job_bytes=15)
    info = storage.save_upload("job1", "lease1", "out.txt", io.BytesIO(b"12345"), _sha(b"12345"))
    assert (info.size, info.sha256) == (5, _sha(b"12345"))
    storage.save_upload("job1", "lease2", "out.txt", io.BytesIO(b"late"), _sha(b"late"))
    with pytest.raises(StorageError, match="checksum_mismatch"):
        storage.save_upload("job1", "lease1", "b.txt", io.BytesIO(b"abc"), _sha(b"abd"))
    with pytest.raises(StorageError, match="too_large"):
        storage.save_upload("job1", "lease1", "big", io.BytesIO(b"x" * 11), _sha(b"x" * 11))
    with pytest.raises(StorageError, match="too_large"):  # 5 already staged + 11 > 15
        storage.save_upload("job1", "lease1", "c", io.BytesIO(b"y" * 10 + b"z"), _sha(b"y"))
    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(StorageError, match="bad_name"):
            storage.save_upload("job1", "lease1", bad, io.BytesIO(b"x"), _sha(b"x"))
    assert [i.name for i in storage.staged("job1", "lease1")] == ["out.txt"]
    storage.commit("job1", "lease1")
    assert [(i.name, i.size) for i in storage.outputs("job1")] == [("out.txt", 5)]
    assert storage.staged("job1", "lease2") == []  # the other lease's upload is gone
    assert open(storage.output_path("job1", "out.txt"), "rb").read() == b"12345"
    with pytest.raises(StorageError, match="not_found"):
        storage.output_path("job1", "nothing")
