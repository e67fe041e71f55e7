"""Small helpers for the job tests: wrap a body in a root, parse, collect errors."""

from __future__ import annotations

import pathlib

import pytest

from vmwrapper.job import JobFileError, LoadedJob, parse_job

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "job"
ROOT = pathlib.Path(__file__).resolve().parents[3]


def document(body: str, root: str = "vm_job") -> bytes:
    """*body* inside *root*, starting on line 2 (line 1 is the root's start tag)."""
    return f"<{root}>\n{body}\n</{root}>\n".encode()


def parse(body: str, root: str = "vm_job") -> LoadedJob:
    return parse_job(document(body, root))


def errors(body: str, root: str = "vm_job") -> list:
    with pytest.raises(JobFileError) as caught:
        parse(body, root)
    assert caught.value.errors, "JobFileError without errors"
    return caught.value.errors
