"""Stable reason codes for every trickle that was not credited in full.

Each handled message that was rejected, or credited less than it claimed, gets one row in our own
table ``trickle_reason`` (message id, code). The codes are part of the daemon's interface: admins
count them for statistics, so never rename one; add new ones instead.
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why a message earned no credit (a rejection) or less than it claimed (a note)."""

    # -- the message text (trickle_handler.messages) --
    TOO_LARGE = "too_large"
    EMPTY_MESSAGE = "empty_message"
    CONTROL_CHARACTERS = "control_characters"
    MALFORMED_XML = "malformed_xml"
    DTD_FORBIDDEN = "dtd_forbidden"
    ENTITY_FORBIDDEN = "entity_forbidden"
    NESTED_ELEMENT = "nested_element"
    DUPLICATE_FIELD = "duplicate_field"
    MISSING_RESULT_NAME = "missing_result_name"
    EMPTY_RESULT_NAME = "empty_result_name"
    BAD_RESULT_NAME = "bad_result_name"
    MISSING_TIME = "missing_time"
    BAD_TIME = "bad_time"
    TIME_OUT_OF_RANGE = "time_out_of_range"
    MISSING_VALUE = "missing_value"
    AMBIGUOUS_VALUE = "ambiguous_value"
    NON_NUMERIC_VALUE = "non_numeric_value"
    NAN_VALUE = "nan_value"
    INFINITE_VALUE = "infinite_value"
    NEGATIVE_VALUE = "negative_value"
    ZERO_RUNTIME = "zero_runtime"
    # -- the rows the message refers to (trickle_handler.rules) --
    UNKNOWN_HOST = "unknown_host"
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_RESULT = "unknown_result"
    FOREIGN_RESULT = "foreign_result"
    RESULT_NOT_SENT = "result_not_sent"
    RESULT_REPORTED = "result_reported"
    RESULT_OVER = "result_over"
    BEFORE_SENT = "before_sent"
    # -- replays and ordering --
    DUPLICATE_RUNTIME = "duplicate_runtime"
    REPLAYED_CPU_TIME = "replayed_cpu_time"
    CPU_TIME_REGRESSION = "cpu_time_regression"
    NO_WALL_TIME = "no_wall_time"
    # -- notes: credited, but less than claimed or not everywhere --
    CAPPED_WALL_TIME = "capped_wall_time"
    CAPPED_MAX_RUNTIME = "capped_max_runtime"
    UNKNOWN_TEAM = "unknown_team"

    @property
    def code(self) -> str:
        """The stable string stored in ``trickle_reason.reason``."""
        return self.value

    @property
    def is_rejection(self) -> bool:
        """True when the message earns nothing; False for notes on a (partly) credited message."""
        return self not in _NOTES


_NOTES = frozenset({Reason.CAPPED_WALL_TIME, Reason.CAPPED_MAX_RUNTIME, Reason.UNKNOWN_TEAM})


class RejectedMessage(Exception):
    """A message that earns no credit, with its :class:`Reason` and a detail for the log."""

    def __init__(self, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{reason.code}: {detail}" if detail else reason.code)
        self.reason = reason
        self.detail = detail
