"""Whatever bytes a job file holds, the parser answers with a job or with JobFileError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmwrapper.job import JobFileError, parse_job
from vmwrapper.job.model import JobDescription, Task, xml_fields

NAMES = [f.name for f in xml_fields(JobDescription)] + [f.name for f in xml_fields(Task)]
TEXTS = st.sampled_from(["", "0", "1", "-1", "3600", "1e400", "abc", "a/b", "../x", "NAME=v",
                         "stomp://u:p@127.0.0.1:1", "qemu", "host", "&amp;", " 2 "])


def _element(children):
    return st.builds(lambda tag, body: f"<{tag}>{body}</{tag}>", st.sampled_from(NAMES),
                     st.one_of(TEXTS, children.map("".join)))


ELEMENTS = st.recursive(st.builds(lambda tag, text: f"<{tag}>{text}</{tag}>",
                                  st.sampled_from(NAMES), TEXTS),
                        lambda children: _element(st.lists(children, max_size=4)),
                        max_leaves=12)


def _outcome(data: bytes) -> None:
    try:
        loaded = parse_job(data)
    except JobFileError as exc:
        assert exc.errors
        assert all(issue.message and issue.fix for issue in exc.errors)
    else:
        assert isinstance(loaded.job, JobDescription)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data):
    _outcome(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["vm_job", "vbox_job", "job_desc"]), st.lists(ELEMENTS, max_size=8))
def test_random_documents_of_known_elements(root, elements):
    _outcome(f"<{root}>{''.join(elements)}</{root}>".encode())
