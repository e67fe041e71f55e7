"""vmcontroller: host controller and guest agent talking over a STOMP broker."""

__version__ = "0.1.0"
