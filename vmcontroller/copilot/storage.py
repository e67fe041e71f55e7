"""Per-job directories on the project server: inputs, staged uploads, outputs.

::

    ROOT/jobs/<job>/inputs/<name>              uploaded with the job
    ROOT/jobs/<job>/staging/<lease>/<name>     an attempt's uploads, not yet accepted
    ROOT/jobs/<job>/outputs/<name>             the successful attempt's files

An attempt uploads into its own staging directory, so a late upload from an
expired lease can never mix with the files of the attempt that finished;
:meth:`JobStorage.commit` swaps the staging directory in when the attempt
is declared done.  Every write checks the name (one plain file name), the
size limits and the sha256 the uploader claimed, and lands by atomic rename.
"""

# -*- test-case-name: tests.unit.copilot.test_storage -*-

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from typing import BinaryIO

from vmcontroller.copilot.spec import SpecError, check_file_name

__all__ = ["FileInfo", "JobStorage", "StorageError"]

_CHUNK = 1024 * 1024
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class StorageError(Exception):
    """A refused or failed write; ``code`` is ``bad_name``, ``too_large``,
    ``checksum_mismatch`` or ``not_found``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    sha256: str


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class JobStorage:
    """The file side of the job manager.

    :param max_file_bytes: largest single input or output file.
    :param max_job_bytes: most bytes one attempt may upload in total.
    """

    def __init__(
        self, root: str, max_file_bytes: int = 256 * 1024 * 1024, max_job_bytes: int = 1 << 30
    ) -> None:
        self.root = os.path.abspath(root)
        self.max_file_bytes = max_file_bytes
        self.max_job_bytes = max_job_bytes
        os.makedirs(os.path.join(self.root, "jobs"), exist_ok=True)

    # --- paths -------------------------------------------------------------------

    def _dir(self, job_id: str, *parts: str) -> str:
        for part in (job_id, *parts):
            if not _ID.fullmatch(part) and part not in ("inputs", "outputs", "staging"):
                raise StorageError("bad_name", f"invalid id {part!r}")
        return os.path.join(self.root, "jobs", job_id, *parts)

    @staticmethod
    def _name(name: str) -> str:
        try:
            return check_file_name(name)
        except SpecError as error:
            raise StorageError("bad_name", str(error)) from None

    # --- writing -------------------------------------------------------------------

    def _write(
        self, directory: str, name: str, source: BinaryIO, expected_sha256: str | None, limit: int
    ) -> FileInfo:
        name = self._name(name)
        if expected_sha256 is not None and not _HEX64.fullmatch(expected_sha256):
            raise StorageError("bad_request", "sha256 must be 64 lower-case hex digits")
        os.makedirs(directory, exist_ok=True)
        final = os.path.join(directory, name)
        temp = os.path.join(directory, f".{name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(temp, "wb") as out:
                while chunk := source.read(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise StorageError(
                            "too_large", f"{name} exceeds the limit of {limit} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if expected_sha256 is not None and actual != expected_sha256:
                raise StorageError(
                    "checksum_mismatch",
                    f"{name}: sha256 of the received bytes is {actual}, sender said "
                    f"{expected_sha256}",
                )
            os.replace(temp, final)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return FileInfo(name, size, actual)

    def save_input(self, job_id: str, name: str, source: BinaryIO) -> FileInfo:
        """Store one input file of a job being submitted."""
        return self._write(self._dir(job_id, "inputs"), name, source, None, self.max_file_bytes)

    def save_upload(
        self, job_id: str, lease_id: str, name: str, source: BinaryIO, sha256: str
    ) -> FileInfo:
        """Store one output file uploaded under ``lease_id``, checking size and sha256."""
        directory = self._dir(job_id, "staging", lease_id)
        already = sum(info.size for info in self.staged(job_id, lease_id) if info.name != name)
        limit = min(self.max_file_bytes, self.max_job_bytes - already)
        return self._write(directory, name, source, sha256, max(limit, 0))

    def commit(self, job_id: str, lease_id: str) -> None:
        """Make ``lease_id``'s staged uploads the job's outputs (replacing older ones)."""
        staging = self._dir(job_id, "staging", lease_id)
        outputs = self._dir(job_id, "outputs")
        if os.path.exists(outputs):
            shutil.rmtree(outputs)
        if os.path.isdir(staging):
            os.replace(staging, outputs)
        self.discard_all_staging(job_id)

    def discard(self, job_id: str, lease_id: str) -> None:
        """Drop an attempt's uploads (it failed, or its lease expired)."""
        staging = self._dir(job_id, "staging", lease_id)
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)

    def discard_all_staging(self, job_id: str) -> None:
        staging = self._dir(job_id, "staging")
        if os.path.isdir(staging):  # most jobs upload nothing but their logs
            shutil.rmtree(staging, ignore_errors=True)

    # --- reading ---------------------------------------------------------------------

    def _list(self, directory: str) -> list[FileInfo]:
        if not os.path.isdir(directory):
            return []
        found = []
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            found.append(FileInfo(name, os.path.getsize(path), sha256_file(path)))
        return found

    def staged(self, job_id: str, lease_id: str) -> list[FileInfo]:
        return self._list(self._dir(job_id, "staging", lease_id))

    def inputs(self, job_id: str) -> list[FileInfo]:
        return self._list(self._dir(job_id, "inputs"))

    def outputs(self, job_id: str) -> list[FileInfo]:
        return self._list(self._dir(job_id, "outputs"))

    def input_path(self, job_id: str, name: str) -> str:
        return self._existing(self._dir(job_id, "inputs"), name)

    def output_path(self, job_id: str, name: str) -> str:
        return self._existing(self._dir(job_id, "outputs"), name)

    def _existing(self, directory: str, name: str) -> str:
        path = os.path.join(directory, self._name(name))
        if not os.path.isfile(path):
            raise StorageError("not_found", f"no file {name!r}")
        return path
