"""The pilot's HTTP transfers against a real HTTP server that is down at first."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time

import pytest

from vmcontroller.copilot.transfer_http import TransferRefused, upload


class _Handler(http.server.BaseHTTPRequestHandler):
    calls: list[tuple[str, bytes]] = []
    status = 201

    def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).calls.append((self.path, body))
        reply = json.dumps({"size": len(body), "message": "no"}).encode()
        self.send_response(self.status)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def output(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(b"result\n")
    return str(path), hashlib.sha256(b"result\n").hexdigest()


def _serve(port: int, status: int) -> tuple[http.server.HTTPServer, type[_Handler]]:
    handler = type("Handler", (_Handler,), {"calls": [], "status": status})
    server = http.server.HTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler


def test_an_upload_waits_for_a_manager_that_is_restarting(output):
    """Connection refused (nobody listening yet) is retried until the server is up."""
    port = _free_port()
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        upload(f"http://127.0.0.1:{port}", "tok", "out.txt", output[0], output[1], retry_for=30)))
    worker.start()
    time.sleep(0.5)  # the upload meets a refused connection first
    server, handler = _serve(port, 201)
    try:
        worker.join(30)
        assert result == {"size": 7, "message": "no"}
        assert handler.calls == [("/lease/outputs/out.txt", b"result\n")]
    finally:
        server.shutdown()
        server.server_close()


def test_an_answered_refusal_is_not_retried(output):
    port = _free_port()
    server, handler = _serve(port, 409)
    try:
        with pytest.raises(TransferRefused) as refused:
            upload(f"http://127.0.0.1:{port}", "tok", "out.txt", output[0], output[1])
        assert refused.value.status == 409 and len(handler.calls) == 1
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_manager_is_given_up_on(output):
    with pytest.raises(OSError):
        upload(f"http://127.0.0.1:{_free_port()}", "tok", "x", output[0], output[1], retry_for=0.5)
