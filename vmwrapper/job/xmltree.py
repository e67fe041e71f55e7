"""A small, safe XML reader for job files: elements that remember their line.

Job errors must name a line, which ElementTree cannot give, so we build our own
tiny tree straight from expat, on the wrapper's one hardened parser
(:func:`vmwrapper.boinc.xmlsafe.hardened_parser`). Like every XML input of the
wrapper it refuses document type declarations outright: without a DTD there
are no entity definitions, hence no entity expansion ("billion laughs") and no
external entities. The file size is capped so a corrupt file cannot eat the
memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.parsers import expat

from vmwrapper.boinc.xmlsafe import ForbiddenXml, hardened_parser

#: Job descriptions are a few kilobytes; anything above this is not one.
MAX_JOB_FILE_BYTES = 1 << 20


@dataclass
class XmlElement:
    """An element with its attributes, direct text, children and 1-based line."""

    tag: str
    line: int
    attributes: dict[str, str] = field(default_factory=dict)
    children: list[XmlElement] = field(default_factory=list)
    text: str = ""
    #: Line of the first non-blank text directly inside this element, if any.
    text_line: int | None = None


class XmlReadError(Exception):
    """The bytes are not a well-formed, DTD-free XML document of bounded size."""

    def __init__(self, line: int | None, message: str, fix: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message
        self.fix = fix


def read_xml(data: bytes) -> XmlElement:
    """Parse *data* into a tree of :class:`XmlElement`.

    :raises XmlReadError: too big, malformed, or containing a DTD or entity declaration.
    """
    if len(data) > MAX_JOB_FILE_BYTES:
        raise XmlReadError(None, f"the file has {len(data)} bytes; a job file has at most "
                                 f"{MAX_JOB_FILE_BYTES}", "give the right file")
    parser = hardened_parser()
    stack: list[XmlElement] = []
    roots: list[XmlElement] = []

    def start(tag: str, attributes: dict[str, str]) -> None:
        element = XmlElement(tag, parser.CurrentLineNumber, dict(attributes))
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if not stack:
            return
        element = stack[-1]
        if element.text_line is None and data.strip():
            element.text_line = parser.CurrentLineNumber
        element.text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(data, True)
    except ForbiddenXml:
        raise XmlReadError(parser.CurrentLineNumber,
                           "<!DOCTYPE> and entity declarations are not allowed in a job file",
                           "remove the <!DOCTYPE ...> block and write values directly") from None
    except expat.ExpatError as exc:
        raise XmlReadError(exc.lineno, f"malformed XML: {expat.ErrorString(exc.code)} "
                                       f"(column {exc.offset + 1})",
                           "correct the XML at that line (note: '--' is not allowed inside "
                           "<!-- comments -->)") from None
    return roots[0]
