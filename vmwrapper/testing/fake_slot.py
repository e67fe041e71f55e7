"""A BOINC slot without a client: measure how fast an app starts talking.

The client prepares a slot with ``init_data.xml`` and a zeroed
``boinc_mmap_file`` and then polls the app_status channel once a second. We
do the same, polling much faster, to time "exec to first status message"
(the first heartbeat the client would see) for the standalone executable.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from collections.abc import Sequence

from vmwrapper.boinc.shmem import Channel, SharedMemory


def init_data_xml(result_name: str, client_pid: int) -> str:
    """A minimal ``init_data.xml``: mmap shared memory (``shm_key -1``) and a live client pid."""
    return (
        "<app_init_data>\n<major_version>7</major_version>\n<minor_version>20</minor_version>\n"
        "<release>5</release>\n<app_version>100</app_version>\n<app_name>vmwrapper</app_name>\n"
        f"<wu_name>{result_name}_wu</wu_name>\n<result_name>{result_name}</result_name>\n"
        f"<shm_key>-1</shm_key>\n<slot>0</slot>\n<client_pid>{client_pid}</client_pid>\n"
        "<checkpoint_period>60.000000</checkpoint_period>\n<ncpus>1.000000</ncpus>\n"
        "</app_init_data>\n"
    )


def make_slot(slot_dir: pathlib.Path, result_name: str = "bench_0") -> SharedMemory:
    """Prepare ``slot_dir`` like the client does; returns the client's side of the memory."""
    slot_dir.mkdir(parents=True, exist_ok=True)
    (slot_dir / "init_data.xml").write_text(init_data_xml(result_name, os.getpid()))
    return SharedMemory.create(slot_dir / "boinc_mmap_file")


def time_to_first_status(command: Sequence[str], slot_dir: pathlib.Path,
                         timeout: float = 30) -> tuple[float, str]:
    """Start ``command`` in a fresh fake slot; seconds until its first app_status, and the text.

    The process is killed before returning (also on timeout, which raises TimeoutError).
    """
    shmem = make_slot(slot_dir)
    try:
        start = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=slot_dir, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                message = shmem.receive(Channel.APP_STATUS)
                if message is not None:
                    return time.perf_counter() - start, message
                if process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited with {process.returncode} "
                                       "before its first status message")
                if time.perf_counter() - start > timeout:
                    raise TimeoutError(f"no status message from {command[0]} in {timeout:g} s")
                time.sleep(0.0005)
        finally:
            process.kill()
            process.wait()
    finally:
        shmem.close()
