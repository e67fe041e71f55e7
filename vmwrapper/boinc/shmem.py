"""``boinc_mmap_file``: the shared memory between the client and the app.

8192 bytes, 8 channels of 1024 bytes in a fixed order (``boinc_protocol.md``
section 3). Each channel: byte 0 is a flag (nonzero = a message is waiting),
bytes 1.. hold NUL-terminated text of at most 1022 characters. The sender
writes only when the flag is 0 (or overwrites on purpose), then sets it; the
receiver copies the text, then clears the flag. No locks: the text is written
before the flag, and read before the flag is cleared.

The same class serves both sides, so tests play the client with it.
"""

from __future__ import annotations

import mmap
import os
import pathlib
from enum import IntEnum

from vmwrapper.boinc.errors import SharedMemoryError

#: The file name in the slot directory (API version >= 6, ``<shm_key>-1``).
MMAP_FILE_NAME = "boinc_mmap_file"
CHANNEL_SIZE = 1024
CHANNEL_COUNT = 8
SHMEM_SIZE = CHANNEL_SIZE * CHANNEL_COUNT
#: Longest text a channel holds: the flag byte and a final NUL take two bytes.
MAX_MESSAGE_LENGTH = CHANNEL_SIZE - 2


class Channel(IntEnum):
    """The channels, in file order; the value times 1024 is the offset."""

    PROCESS_CONTROL_REQUEST = 0  #: client -> app: suspend, resume, quit, abort...
    PROCESS_CONTROL_REPLY = 1  #: app -> client: unused
    GRAPHICS_REQUEST = 2  #: client -> app: unused
    GRAPHICS_REPLY = 3  #: app -> client: web graphics URL / remote desktop address
    HEARTBEAT = 4  #: client -> app, every second
    APP_STATUS = 5  #: app -> client: CPU time, fraction done...
    TRICKLE_UP = 6  #: app -> client: <have_new_trickle_up/>
    TRICKLE_DOWN = 7  #: client -> app: <have_trickle_down/>


class SharedMemory:
    """A mapped ``boinc_mmap_file``; see :meth:`open`."""

    def __init__(self, mapping: mmap.mmap, path: pathlib.Path) -> None:
        self._map = mapping
        self.path = path

    @classmethod
    def open(cls, path: str | pathlib.Path) -> SharedMemory:
        """Map the file at *path* read-write and shared.

        :raises SharedMemoryError: missing, unreadable, or not 8192 bytes long
            (the message names the file and what is wrong).
        """
        path = pathlib.Path(path)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise SharedMemoryError(
                f"cannot open the shared memory file {path}: {exc.strerror or exc}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size < SHMEM_SIZE:
                raise SharedMemoryError(
                    f"shared memory file {path} has {size} bytes, expected {SHMEM_SIZE}"
                )
            try:
                mapping = mmap.mmap(fd, SHMEM_SIZE, mmap.MAP_SHARED)
            except OSError as exc:
                raise SharedMemoryError(f"cannot map {path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        return cls(mapping, path)

    @classmethod
    def create(cls, path: str | pathlib.Path) -> SharedMemory:
        """Create a zeroed 8192-byte file at *path* and map it: the client's side."""
        pathlib.Path(path).write_bytes(bytes(SHMEM_SIZE))
        return cls.open(path)

    def close(self) -> None:
        """Unmap the file; the object is unusable afterwards."""
        self._map.close()

    def has_message(self, channel: Channel) -> bool:
        """True while a message sent on *channel* has not been received."""
        return self._map[channel * CHANNEL_SIZE] != 0

    def receive(self, channel: Channel) -> str | None:
        """Take the waiting message on *channel*, or return None when there is none."""
        offset = channel * CHANNEL_SIZE
        mapping = self._map
        if mapping[offset] == 0:
            return None
        start = offset + 1
        end = mapping.find(b"\0", start, offset + CHANNEL_SIZE)
        if end < 0:
            end = offset + CHANNEL_SIZE
        text = mapping[start:end].decode("utf-8", errors="replace")
        mapping[offset] = 0
        return text

    def send(self, channel: Channel, text: str) -> bool:
        """Send *text* if the channel is free; False (nothing written) if it is full."""
        if self._map[channel * CHANNEL_SIZE] != 0:
            return False
        self.force_send(channel, text)
        return True

    def force_send(self, channel: Channel, text: str) -> None:
        """Send *text* whether or not the previous message was received.

        :raises ValueError: the text is longer than :data:`MAX_MESSAGE_LENGTH` bytes.
        """
        data = text.encode("utf-8")
        if len(data) > MAX_MESSAGE_LENGTH:
            raise ValueError(
                f"message of {len(data)} bytes for channel {channel.name} exceeds "
                f"{MAX_MESSAGE_LENGTH}: {text[:60]!r}..."
            )
        offset = channel * CHANNEL_SIZE
        start = offset + 1
        self._map[start : start + len(data) + 1] = data + b"\0"
        self._map[offset] = 1
