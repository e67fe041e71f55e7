"""Errors of the BOINC runtime API.

One hierarchy so the application can catch :class:`BoincApiError` once and
turn it into a temporary exit (the slot or the client may be fine again on the
next start). Every message names the file and, where there is one, the field,
because it ends up in ``stderr.txt`` on the project's server.
"""

from __future__ import annotations


class BoincApiError(Exception):
    """Something the client gave us (or failed to give us) is unusable."""


class InitDataError(BoincApiError):
    """``init_data.xml`` is malformed, or one of its fields has the wrong type."""


class SlotError(BoincApiError):
    """A file in the slot directory is missing, unreadable or unwritable."""


class SharedMemoryError(BoincApiError):
    """``boinc_mmap_file`` is missing, of the wrong size, or cannot be mapped."""
