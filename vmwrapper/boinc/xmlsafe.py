"""Hardened XML parsing for files the client (or a damaged slot) gives us.

``init_data.xml`` is written by the client, but it lives in a slot directory
that anything running as the volunteer's user can write. We parse it with expat
directly and refuse any document type declaration: no DTD means no entity
definitions, so no entity expansion ("billion laughs"), no external entities and
no network access. The standard library's ElementTree parser would accept them.
Nesting is limited too (:data:`MAX_DEPTH`).

:func:`hardened_parser` is the one place where the refusals are set up; the job
file reader (``vmwrapper.job.xmltree``) builds its line-numbered tree on it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from vmwrapper.boinc.errors import BoincApiError

#: Deeper nesting is refused: nothing the client writes goes past 4 levels, and
#: deep trees make recursive tree code (serialisation) blow Python's stack.
MAX_DEPTH = 64


class ForbiddenXml(Exception):
    """Raised from expat callbacks to stop at a DTD, an entity or deep nesting."""


def _refuse(*_args: object) -> None:
    raise ForbiddenXml("document type declarations and entities are not allowed")


def hardened_parser() -> expat.XMLParserType:
    """An expat parser that raises :class:`ForbiddenXml` at any DTD or entity declaration.

    Refusing the ``<!DOCTYPE>`` itself is what makes the input safe: without a DTD
    no entity can be defined, so none can expand or fetch anything. Callers add
    their element and text handlers; text is buffered so one run of text arrives
    in one call.
    """
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.buffer_text = True
    return parser


class _DepthLimitedBuilder(ET.TreeBuilder):
    """A tree builder that refuses elements nested deeper than :data:`MAX_DEPTH`."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ForbiddenXml(f"elements nested deeper than {MAX_DEPTH} levels")
        return super().start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        self._depth -= 1
        return super().end(tag)


def parse_xml(data: bytes, what: str, error: type[BoincApiError] = BoincApiError) -> ET.Element:
    """Parse *data* into an element tree, refusing DTDs, entities and deep nesting.

    :param what: the file name used in error messages (``init_data.xml``).
    :param error: the exception class raised on malformed or forbidden input.
    :returns: the root element.
    """
    builder = _DepthLimitedBuilder()
    parser = hardened_parser()
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        root = builder.close()
    except ForbiddenXml as exc:
        raise error(f"{what}: {exc}") from None
    except expat.ExpatError as exc:
        raise error(f"{what}: malformed XML: {exc}") from None
    except AssertionError:  # TreeBuilder.close() with no element at all
        raise error(f"{what}: no XML element found") from None
    return root
