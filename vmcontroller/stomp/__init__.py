"""STOMP for vmcontroller: a pure bytes codec shared by the clients and the broker.

``codec`` turns bytes into frames and back; the Twisted client protocol
lives next to it in ``client``.
"""

from __future__ import annotations

from vmcontroller.stomp.codec import (
    HEARTBEAT,
    SUPPORTED_VERSIONS,
    Frame,
    FrameError,
    FrameParser,
    FrameTooLarge,
    MalformedFrame,
    encode_frame,
    encode_head,
)

__all__ = [
    "HEARTBEAT",
    "SUPPORTED_VERSIONS",
    "Frame",
    "FrameError",
    "FrameParser",
    "FrameTooLarge",
    "MalformedFrame",
    "encode_frame",
    "encode_head",
]
