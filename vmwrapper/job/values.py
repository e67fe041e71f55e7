"""Kinds of element values: turn an element's text into a typed value, or say why not.

Each kind knows how to describe itself ("a number of seconds >= 0") and gives an
example, so the parser can tell the admin exactly what to write instead.
"""

from __future__ import annotations

import math
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Protocol

from vmwrapper.job.broker import Broker, parse_broker_url
from vmwrapper.job.drivers import DRIVER_NAMES


class BadValue(ValueError):
    """The text cannot be converted; ``str()`` is the reason."""


class Kind(Protocol):
    """How to read one element's text. ``describe()`` completes "write ..."."""

    def parse(self, text: str) -> Any: ...

    def describe(self) -> str: ...

    @property
    def example(self) -> str: ...


@dataclass(frozen=True)
class Flag:
    """BOINC's boolean: ``<x/>`` (or empty) is true, ``<x>1</x>`` true, ``<x>0</x>`` false."""

    example: str = "1"

    def parse(self, text: str) -> bool:
        if text in ("", "1"):
            return True
        if text == "0":
            return False
        raise BadValue(f"{text!r} is not a boolean")

    def describe(self) -> str:
        return "an empty element for true, or 1 or 0"


@dataclass(frozen=True)
class Text:
    """Any text (surrounding blanks removed, as BOINC's parser does)."""

    what: str = "text"
    example: str = "value"
    nonempty: bool = False

    def parse(self, text: str) -> str:
        if self.nonempty and not text:
            raise BadValue("it is empty")
        return text

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class FileName:
    """A relative path that stays inside its directory (slot, shared or project dir)."""

    where: str = "the slot directory"
    example: str = "output.txt"

    def parse(self, text: str) -> str:
        if not text:
            raise BadValue("the file name is empty")
        if "\0" in text:
            raise BadValue("the file name contains a NUL character")
        if text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text):
            raise BadValue(f"{text!r} is an absolute path")
        if ".." in re.split(r"[/\\]", text):
            raise BadValue(f"{text!r} leaves {self.where} with '..'")
        return text

    def describe(self) -> str:
        return f"a file name relative to {self.where}"


@dataclass(frozen=True)
class LogicalName:
    """A BOINC logical file name: one path component, resolved through the slot's soft links."""

    example: str = "vm_image.vdi"

    def parse(self, text: str) -> str:
        if not text or text in (".", ".."):
            raise BadValue(f"{text!r} is not a file name")
        if "/" in text or "\\" in text or "\0" in text:
            raise BadValue(f"{text!r} is a path; a logical name is a plain file name")
        return text

    def describe(self) -> str:
        return "a logical file name (no directory part)"


@dataclass(frozen=True)
class GuestPath:
    """A path in the guest: absolute, or relative to the guest's work directory."""

    example: str = "results/out.root"

    def parse(self, text: str) -> str:
        if not text or "\0" in text:
            raise BadValue(f"{text!r} is not a path")
        if not text.startswith("/") and ".." in text.split("/"):
            raise BadValue(f"{text!r} leaves the guest work directory with '..'")
        return posixpath.normpath(text)

    def describe(self) -> str:
        return "a path in the guest (absolute, or relative to its work directory)"


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadValue(f"{text!r} is not a finite number")
    return value


@dataclass(frozen=True)
class Number:
    """A finite decimal number within bounds (``above`` excludes its bound)."""

    unit: str
    minimum: float | None = 0.0
    above: float | None = None
    maximum: float | None = None
    example: str = "600"

    def parse(self, text: str) -> float:
        value = _number(text)
        if self.minimum is not None and value < self.minimum:
            raise BadValue(f"{text} is below {_fmt(self.minimum)}")
        if self.above is not None and value <= self.above:
            raise BadValue(f"{text} must be above {_fmt(self.above)}")
        if self.maximum is not None and value > self.maximum:
            raise BadValue(f"{text} is above {_fmt(self.maximum)}")
        return value

    def describe(self) -> str:
        bounds = []
        if self.minimum is not None:
            bounds.append(f">= {_fmt(self.minimum)}")
        if self.above is not None:
            bounds.append(f"> {_fmt(self.above)}")
        if self.maximum is not None:
            bounds.append(f"<= {_fmt(self.maximum)}")
        return f"a number of {self.unit} {' and '.join(bounds)}".rstrip()


@dataclass(frozen=True)
class Integer:
    """A whole number within bounds."""

    what: str
    minimum: int = 0
    maximum: int | None = None
    example: str = "1"

    def parse(self, text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise BadValue(f"{text!r} is not a whole number")
        value = int(text)
        if value < self.minimum or (self.maximum is not None and value > self.maximum):
            raise BadValue(f"{text} is out of range")
        return value

    def describe(self) -> str:
        top = "" if self.maximum is None else f" to {self.maximum}"
        return f"{self.what}, a whole number from {self.minimum}{top}"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of words, matched without regard to case, kept in canonical spelling."""

    choices: tuple[str, ...]

    @property
    def example(self) -> str:
        return self.choices[0]

    def parse(self, text: str) -> str:
        for choice in self.choices:
            if choice.lower() == text.lower():
                return choice
        raise BadValue(f"{text!r} is not one of {', '.join(self.choices)}")

    def describe(self) -> str:
        return f"one of {', '.join(self.choices)}"


@dataclass(frozen=True)
class EnvSetting:
    """``NAME=value`` for the task's environment; returns ``(NAME, value)``."""

    example: str = "LC_ALL=C"

    def parse(self, text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise BadValue(f"{text!r} is not NAME=value")
        return name, value

    def describe(self) -> str:
        return "NAME=value (NAME made of letters, digits and _)"


@dataclass(frozen=True)
class HypervisorList:
    """``auto``, or drivers in order of preference separated by commas or blanks."""

    example: str = "qemu,virtualbox"

    def parse(self, text: str) -> tuple[str, ...]:
        names = tuple(name.lower() for name in re.split(r"[,\s]+", text) if name)
        if names == ("auto",):
            return names
        if not names:
            raise BadValue("no hypervisor named")
        unknown = [name for name in names if name not in DRIVER_NAMES]
        if unknown:
            raise BadValue(f"unknown hypervisor {', '.join(map(repr, unknown))}")
        if len(set(names)) != len(names):
            raise BadValue(f"{text!r} names a hypervisor twice")
        return names

    def describe(self) -> str:
        return f"auto, or some of {', '.join(DRIVER_NAMES)} in order of preference"


@dataclass(frozen=True)
class BrokerUrl:
    """``embedded`` or an external STOMP broker URL."""

    example: str = "stomp://user:secret@127.0.0.1:61613"

    def parse(self, text: str) -> Broker:
        try:
            return parse_broker_url(text)
        except ValueError as exc:
            raise BadValue(str(exc)) from None

    def describe(self) -> str:
        return "embedded, or stomp://user:password@host:port (stomp+ssl:// for TLS)"


@dataclass(frozen=True)
class Pattern:
    """A regular expression (Python syntax) matched against file names."""

    example: str = r"^result_.*\.txt$"

    def parse(self, text: str) -> str:
        try:
            re.compile(text)
        except re.error as exc:
            raise BadValue(f"{text!r} is not a regular expression: {exc}") from None
        return text

    def describe(self) -> str:
        return "a regular expression matching output file names"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
