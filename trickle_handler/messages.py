"""Parse the ``xml`` column of a ``msg_from_host`` row into a :class:`Trickle`.

BOINC's scheduler stores every line of the client's ``<msg_from_host>`` element except the
``<variety>`` line: the client's ``<result_name>`` and ``<time>`` lines, then the app's body
(``../shared/credit_rules.md`` section 1)::

          <result_name>wu1_0</result_name>
          <time>1795548363</time>
    <cpu_time>3600.000000</cpu_time>

All of it is written by the volunteer's machine, so it is parsed as hostile input: a bounded size,
no DTD and no entities (expat with both refused), ASCII decimal numbers only (Python's ``float``
also takes ``1_000``, full-width digits and ``nan``), each field at most once. Any problem raises
:class:`~trickle_handler.reasons.RejectedMessage` naming a :class:`~trickle_handler.reasons.Reason`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal
from xml.parsers import expat

from trickle_handler.reasons import Reason, RejectedMessage

#: Longest ``xml`` accepted. A trickle is a few hundred bytes; BOINC itself truncates at 256 KiB.
MAX_MESSAGE_CHARS = 16384

#: Longest result name: ``result.name`` is ``varchar(254)``.
MAX_RESULT_NAME = 254

#: Client times outside [0, this) are nonsense (this is the year 5138).
MAX_CLIENT_TIME = 1e11

#: The two value tags: ``cpu_time`` is cumulative per result, ``runtime`` an increment.
ValueKind = Literal["cpu_time", "runtime"]
VALUE_TAGS: tuple[ValueKind, ...] = ("cpu_time", "runtime")
_FIELDS = frozenset(("result_name", "time", *VALUE_TAGS))

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z", re.ASCII)
_NAN = re.compile(r"[+-]?nan\Z", re.IGNORECASE)
_INF = re.compile(r"[+-]?inf(?:inity)?\Z", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_NAME_OK = re.compile(r"[\x21-\x7e]+\Z", re.ASCII)
_XML_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class Trickle:
    """What one trickle-up message claims."""

    result_name: str
    client_time: float  # the client's clock when it queued the message; not trusted for caps
    kind: ValueKind
    value: float  # CPU seconds: cumulative for ``cpu_time``, an increment for ``runtime``


class _Fields:
    """Collects the text of the known top-level fields while expat walks the message."""

    def __init__(self) -> None:
        self.texts: dict[str, list[str]] = {}
        self._open: list[str] = []

    def start(self, name: str, _attrs: dict[str, str]) -> None:
        if len(self._open) == 2 and self._open[-1] in _FIELDS:
            raise RejectedMessage(Reason.NESTED_ELEMENT, f"<{name}> inside <{self._open[-1]}>")
        if len(self._open) == 1 and name in _FIELDS:
            if name in self.texts:
                raise RejectedMessage(Reason.DUPLICATE_FIELD, f"<{name}> appears twice")
            self.texts[name] = []
        self._open.append(name)

    def end(self, _name: str) -> None:
        self._open.pop()

    def text(self, data: str) -> None:
        if len(self._open) == 2 and self._open[-1] in _FIELDS:
            self.texts[self._open[-1]].append(data)

    def get(self, name: str) -> str | None:
        parts = self.texts.get(name)
        return None if parts is None else "".join(parts).strip(_XML_WHITESPACE)


def _refuse_dtd(*_args: object) -> None:
    raise RejectedMessage(Reason.DTD_FORBIDDEN, "document type declaration")


def _refuse_entity(*_args: object) -> None:
    raise RejectedMessage(Reason.ENTITY_FORBIDDEN, "entity declaration")


def _walk(xml: str) -> _Fields:
    fields = _Fields()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_entity
    parser.StartElementHandler = fields.start
    parser.EndElementHandler = fields.end
    parser.CharacterDataHandler = fields.text
    try:
        parser.Parse(f"<msg>{xml}</msg>", True)
    except expat.ExpatError as exc:
        if exc.code == expat.errors.codes[expat.errors.XML_ERROR_UNDEFINED_ENTITY]:
            raise RejectedMessage(Reason.ENTITY_FORBIDDEN, str(exc)) from None
        raise RejectedMessage(Reason.MALFORMED_XML, str(exc)) from None
    return fields


def _number(text: str, field: str, bad: Reason) -> float:
    """``text`` as a float, or the reason it is not a plain finite decimal number."""
    if _NAN.match(text):
        raise RejectedMessage(Reason.NAN_VALUE, f"<{field}> is {text!r}")
    if _INF.match(text):
        raise RejectedMessage(Reason.INFINITE_VALUE, f"<{field}> is {text!r}")
    if not _DECIMAL.match(text):
        raise RejectedMessage(bad, f"<{field}> is {text[:40]!r}, not a decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise RejectedMessage(Reason.INFINITE_VALUE, f"<{field}> {text[:40]!r} overflows a double")
    return value


def parse_trickle(xml: str | bytes | None) -> Trickle:
    """The claim in one ``msg_from_host.xml``; raises :class:`RejectedMessage` if it has none."""
    if isinstance(xml, bytes):
        try:
            xml = xml.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RejectedMessage(Reason.MALFORMED_XML, f"not UTF-8: {exc}") from None
    if xml is None or not xml.strip():
        raise RejectedMessage(Reason.EMPTY_MESSAGE)
    if len(xml) > MAX_MESSAGE_CHARS:
        raise RejectedMessage(Reason.TOO_LARGE, f"{len(xml)} characters > {MAX_MESSAGE_CHARS}")
    if _CONTROL.search(xml):
        raise RejectedMessage(Reason.CONTROL_CHARACTERS)
    if "<!DOCTYPE" in xml:
        raise RejectedMessage(Reason.DTD_FORBIDDEN, "document type declaration")
    if "<!ENTITY" in xml:
        raise RejectedMessage(Reason.ENTITY_FORBIDDEN, "entity declaration")
    fields = _walk(xml)

    name = fields.get("result_name")
    if name is None:
        raise RejectedMessage(Reason.MISSING_RESULT_NAME)
    if not name:
        raise RejectedMessage(Reason.EMPTY_RESULT_NAME)
    if len(name) > MAX_RESULT_NAME or not _NAME_OK.match(name):
        raise RejectedMessage(Reason.BAD_RESULT_NAME, f"{name[:60]!r}")

    time_text = fields.get("time")
    if time_text is None:
        raise RejectedMessage(Reason.MISSING_TIME)
    try:
        client_time = _number(time_text, "time", Reason.BAD_TIME)
    except RejectedMessage as exc:
        if exc.reason is Reason.BAD_TIME:
            raise
        raise RejectedMessage(Reason.TIME_OUT_OF_RANGE, exc.detail) from None
    if not 0 <= client_time < MAX_CLIENT_TIME:
        raise RejectedMessage(Reason.TIME_OUT_OF_RANGE, f"<time> is {time_text!r}")

    present = [tag for tag in VALUE_TAGS if tag in fields.texts]
    if not present:
        raise RejectedMessage(Reason.MISSING_VALUE, "neither <cpu_time> nor <runtime>")
    if len(present) > 1:
        raise RejectedMessage(Reason.AMBIGUOUS_VALUE, "both <cpu_time> and <runtime>")
    kind = present[0]
    value = _number(fields.get(kind) or "", kind, Reason.NON_NUMERIC_VALUE)
    if value < 0:
        raise RejectedMessage(Reason.NEGATIVE_VALUE, f"<{kind}> is {value!r}")
    if kind == "runtime" and value == 0:
        raise RejectedMessage(Reason.ZERO_RUNTIME)
    return Trickle(name, client_time, kind, value)
