"""The physicists' side of the HTTP API (blocking, standard library only)."""

# -*- test-case-name: tests.integration.copilot.test_copilot -*-

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["ApiError", "CopilotClient"]


class ApiError(Exception):
    """The manager refused a request; ``status`` and ``code`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code


class CopilotClient:
    """Talks to one job manager with one user token."""

    def __init__(self, server: str, token: str, timeout: float = 30.0) -> None:
        if not server:
            raise ValueError("no job manager URL: give --server URL or set COPILOT_SERVER")
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server {server!r} must be an http:// or https:// URL")
        if not token:
            raise ValueError("a user token is needed (--token or COPILOT_TOKEN)")
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            f"{self.server}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
                if response.headers.get("content-type") == "application/json":
                    return json.loads(payload)
                return payload
        except urllib.error.HTTPError as error:
            try:
                problem = json.loads(error.read())
            except ValueError:
                problem = {"error": "http", "message": error.reason}
            raise ApiError(error.code, problem.get("error", ""), problem.get("message", "")) from None
        except urllib.error.URLError as error:
            raise ApiError(0, "unreachable", f"cannot reach {self.server}: {error.reason}") from None

    def submit(self, job: dict[str, Any], inputs: dict[str, bytes]) -> dict[str, Any]:
        encoded = {name: base64.b64encode(data).decode("ascii") for name, data in inputs.items()}
        return self._call("POST", "/api/jobs", {"job": job, "inputs": encoded})

    def jobs(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/jobs")["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/jobs/{urllib.parse.quote(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/jobs/{urllib.parse.quote(job_id)}/cancel", {})

    def logs(self, job_id: str) -> dict[str, str]:
        return self._call("GET", f"/api/jobs/{urllib.parse.quote(job_id)}/logs")

    def output(self, job_id: str, name: str) -> bytes:
        quoted = urllib.parse.quote(job_id), urllib.parse.quote(name)
        return self._call("GET", "/api/jobs/{}/outputs/{}".format(*quoted))
