"""A minimal blocking STOMP client over a plain socket, built on our codec.

For scripts, health checks, tests and benchmarks that must not run a
reactor (the product's host and agent use the Twisted client in
:mod:`vmcontroller.stomp.client`).  One thread per client; not thread-safe.
"""

from __future__ import annotations

import socket
from collections import deque

from vmcontroller.stomp.codec import Frame, FrameParser, encode_frame

__all__ = ["BlockingClient", "BrokerRefused"]


class BrokerRefused(Exception):
    """The broker answered with an ERROR frame."""

    def __init__(self, frame: Frame) -> None:
        super().__init__(frame.headers.get("message", "ERROR"))
        self.frame = frame


class BlockingClient:
    """One STOMP connection: ``connect()``, then send/subscribe/receive.

    :param address: broker (host, port).
    :param version: STOMP version to ask for ("1.0", "1.1" or "1.2").
    :param timeout: socket timeout in seconds for every blocking call.
    """

    def __init__(
        self, address: tuple[str, int], version: str = "1.2", timeout: float = 10.0
    ) -> None:
        self.version = version
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = FrameParser(version=version)
        self._frames: deque[Frame] = deque()
        # A reused receive buffer: recv() of a large size allocates on every call.
        self._recv_buffer = bytearray(256 * 1024)
        self._recv_view = memoryview(self._recv_buffer)
        self.connected: Frame | None = None

    # wire helpers -------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        self.sock.sendall(encode_frame(frame, self.version))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self, timeout: float | None = None) -> Frame:
        """Next frame from the broker.

        :raises BrokerRefused: if it is an ERROR frame.
        :raises ConnectionError: if the broker closed the connection.
        :raises TimeoutError: if nothing came in time.
        """
        frame = self.receive_any(timeout)
        if frame.command == "ERROR":
            raise BrokerRefused(frame)
        return frame

    def receive_any(self, timeout: float | None = None) -> Frame:
        """Next frame, ERROR frames included."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while not self._frames:
            size = self.sock.recv_into(self._recv_buffer)
            if not size:
                raise ConnectionError("broker closed the connection")
            self._frames.extend(self.parser.feed(self._recv_view[:size]))
        return self._frames.popleft()

    # STOMP commands -------------------------------------------------------------

    def connect(
        self, login: str, passcode: str, heartbeat: tuple[int, int] = (0, 0), host: str = "/"
    ) -> Frame:
        headers = {"accept-version": self.version, "host": host, "login": login}
        headers["passcode"] = passcode
        if self.version != "1.0":
            headers["heart-beat"] = f"{heartbeat[0]},{heartbeat[1]}"
        else:
            del headers["accept-version"]
        self.send_frame(Frame("CONNECT", headers))
        self.connected = self.receive()
        return self.connected

    def send(self, destination: str, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_frame(Frame("SEND", {"destination": destination, **(headers or {})}, body))

    def subscribe(self, destination: str, sub_id: str = "0", ack: str = "auto", **extra) -> None:
        headers = {"destination": destination, "id": sub_id, "ack": ack, **extra}
        self.send_frame(Frame("SUBSCRIBE", headers))

    def ack(self, message: Frame, command: str = "ACK") -> None:
        if self.version == "1.2":
            headers = {"id": message.headers["ack"]}
        else:
            headers = {
                "message-id": message.headers["message-id"],
                "subscription": message.headers["subscription"],
            }
        self.send_frame(Frame(command, headers))

    def nack(self, message: Frame) -> None:
        self.ack(message, "NACK")

    def sync(self, receipt_id: str = "sync") -> list[Frame]:
        """Wait until the broker has processed every frame sent so far.

        Sends an empty transaction asking for a receipt; returns the frames
        that arrived before the RECEIPT (they are consumed).
        """
        self.send_frame(Frame("BEGIN", {"transaction": receipt_id, "receipt": receipt_id}))
        self.send_frame(Frame("ABORT", {"transaction": receipt_id}))
        before = []
        while True:
            frame = self.receive()
            if frame.command == "RECEIPT" and frame.headers.get("receipt-id") == receipt_id:
                return before
            before.append(frame)

    def disconnect(self) -> None:
        try:
            self.send_frame(Frame("DISCONNECT", {"receipt": "bye"}))
            while self.receive().command != "RECEIPT":
                pass
        except (OSError, ConnectionError, BrokerRefused):
            pass
        self.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
