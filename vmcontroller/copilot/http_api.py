"""The job manager's HTTP side: the physicists' API and the pilots' file transfers.

Physicists (``Authorization: Bearer <user token>``)::

    POST /api/jobs                       {"job": {...}, "inputs": {name: base64}}
    GET  /api/jobs                       the caller's jobs
    GET  /api/jobs/<id>                  one job with its history and outputs
    POST /api/jobs/<id>/cancel
    GET  /api/jobs/<id>/logs             stdout/stderr tails of the last attempt
    GET  /api/jobs/<id>/outputs/<name>   one output file

Pilots (``Authorization: Bearer <lease token>`` from their offer)::

    GET  /lease/inputs/<name>
    PUT  /lease/outputs/<name>           header X-Content-SHA256: the file's sha256

Errors are JSON ``{"error": code, "message": text}`` with a fitting status.
Someone else's job is answered 404 exactly like a missing one.  Twisted
buffers a request body before we see it (to a temporary file beyond 100 KB),
so the size limits are checked on the declared Content-Length first and
again while the bytes are copied.  A request is handled through
``manager.executor`` (the store may block: see :mod:`.executor`) and its
answer written from the reactor thread.
"""

# -*- test-case-name: tests.integration.copilot.test_copilot -*-

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.static import File

from vmcontroller.copilot.lease import JobRecord, LeaseRejected
from vmcontroller.copilot.manager import JobManager, NotFound
from vmcontroller.copilot.spec import JobSpec, SpecError
from vmcontroller.copilot.storage import StorageError

__all__ = ["CopilotResource", "job_view"]

log = Logger()

#: Largest submit request (job plus base64 inputs).
MAX_SUBMIT_BYTES = 64 * 1024 * 1024


class _FileBody(str):
    """A reply that is a file on disk, streamed rather than read into memory."""


class _HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def job_view(job: JobRecord) -> dict[str, Any]:
    """What a physicist sees of a job (never the lease token)."""
    return {
        "id": job.id,
        "owner": job.owner,
        "state": str(job.state),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created": job.created,
        "agent": job.lease_agent,
        "spec": job.spec.to_dict(),
        "result": {k: v for k, v in job.result.items() if k not in ("stdout_tail", "stderr_tail")},
    }


def _bearer(request: Request) -> str:
    header = (request.getHeader("authorization") or "").strip()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _HttpError(401, "unauthorized", "send 'Authorization: Bearer <token>'")
    return token.strip()


class CopilotResource(Resource):
    """Every URL of the API, routed by path (see module doc)."""

    isLeaf = True

    def __init__(self, manager: JobManager) -> None:
        super().__init__()
        self.manager = manager

    def render(self, request: Request) -> Any:
        path = [part.decode("utf-8", "replace") for part in request.postpath]
        method = request.method.decode("ascii", "replace")
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        done = self.manager.executor.call(self._handle, request, method, path)
        done.addErrback(self._unexpected, method, path)
        done.addCallback(lambda outcome: gone or self._reply(request, *outcome))
        return NOT_DONE_YET

    def _handle(self, request: Request, method: str, path: list[str]) -> tuple[int, Any]:
        """(In the executor.)  The status and body answering ``request``."""
        try:
            return self._route(request, method, path)
        except _HttpError as error:
            return error.status, {"error": error.code, "message": error.message}
        except NotFound as error:
            return 404, {"error": "not_found", "message": str(error)}
        except LeaseRejected as error:
            return 409, {"error": "lease_rejected", "message": str(error)}
        except SpecError as error:
            return 400, {"error": "bad_job", "message": str(error)}
        except StorageError as error:
            codes = {"too_large": 413, "not_found": 404}
            return codes.get(error.code, 400), {"error": error.code, "message": error.message}

    @staticmethod
    def _unexpected(failure: Failure, method: str, path: list[str]) -> tuple[int, Any]:
        log.failure("{method} /{path} failed", failure, method=method, path="/".join(path))
        return 500, {"error": "internal", "message": "the server failed; see its log"}

    @staticmethod
    def _reply(request: Request, status: int, body: Any) -> None:
        request.setResponseCode(status)
        if isinstance(body, _FileBody):
            written = File(str(body), defaultType="application/octet-stream").render_GET(request)
            if written is not NOT_DONE_YET:  # an error page or a HEAD: File left it to us
                request.write(written)
                request.finish()
            return
        request.setHeader("content-type", "application/json")
        request.write(json.dumps(body).encode("utf-8"))
        request.finish()

    # --- routing ---------------------------------------------------------------------

    def _route(self, request: Request, method: str, path: list[str]) -> tuple[int, Any]:
        if path[:1] == ["lease"] and len(path) == 3:
            return self._lease(request, method, path[1], path[2])
        if path[:2] != ["api", "jobs"]:
            raise _HttpError(404, "not_found", f"no such URL /{'/'.join(path)}")
        user = self.manager.store.user_for_token(_bearer(request))
        if user is None:
            raise _HttpError(401, "unauthorized", "unknown token")
        rest = path[2:]
        if not rest or rest == [""]:
            if method == "POST":
                return 201, job_view(self._submit(request, user))
            if method == "GET":
                return 200, {"jobs": [job_view(job) for job in self.manager.jobs_of(user)]}
        elif len(rest) == 1 and method == "GET":
            job = self.manager.job_for(user, rest[0])
            view = job_view(job)
            view["history"] = [e.__dict__ for e in self.manager.history(user, job.id)]
            view["outputs"] = [i.__dict__ for i in self.manager.storage.outputs(job.id)]
            return 200, view
        elif rest[1:] == ["cancel"] and method == "POST":
            return 200, job_view(self.manager.cancel(user, rest[0]))
        elif rest[1:] == ["logs"] and method == "GET":
            job = self.manager.job_for(user, rest[0])
            return 200, {
                "stdout": job.result.get("stdout_tail", ""),
                "stderr": job.result.get("stderr_tail", ""),
            }
        elif len(rest) == 3 and rest[1] == "outputs" and method == "GET":
            job = self.manager.job_for(user, rest[0])
            return 200, _FileBody(self.manager.storage.output_path(job.id, rest[2]))
        raise _HttpError(405 if rest else 404, "bad_request", f"{method} /{'/'.join(path)}")

    def _submit(self, request: Request, user: str) -> JobRecord:
        length = int(request.getHeader("content-length") or 0)
        if length > MAX_SUBMIT_BYTES:
            raise _HttpError(413, "too_large", f"a submission may be at most {MAX_SUBMIT_BYTES} bytes")
        try:
            data = json.loads(request.content.read(MAX_SUBMIT_BYTES + 1))
        except ValueError as error:
            raise _HttpError(400, "bad_job", f"the request is not JSON: {error}") from None
        if not isinstance(data, dict) or not isinstance(data.get("inputs", {}), dict):
            raise _HttpError(400, "bad_job", 'send {"job": {...}, "inputs": {name: base64}}')
        spec = JobSpec.from_dict(data.get("job"))
        inputs = {}
        for name, encoded in data.get("inputs", {}).items():
            try:
                inputs[name] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, TypeError):
                raise _HttpError(400, "bad_job", f"input {name!r} is not base64") from None
        return self.manager.submit(user, spec, inputs)

    def _lease(self, request: Request, method: str, kind: str, name: str) -> tuple[int, Any]:
        token = _bearer(request)
        if kind == "inputs" and method == "GET":
            job = self.manager.leased_job(token)
            return 200, _FileBody(self.manager.storage.input_path(job.id, name))
        if kind == "outputs" and method == "PUT":
            length = int(request.getHeader("content-length") or 0)
            if length > self.manager.storage.max_file_bytes:
                raise StorageError(
                    "too_large", f"{name}: {length} bytes exceed the per-file limit "
                    f"of {self.manager.storage.max_file_bytes}")
            sha256 = (request.getHeader("x-content-sha256") or "").strip().lower()
            info = self.manager.upload(token, name, request.content, sha256)
            return 201, info.__dict__
        raise _HttpError(405, "bad_request", f"{method} /lease/{kind}/{name}")
