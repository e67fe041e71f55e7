"""TransferSender and TransferReceiver wired back to back, driven by a Clock."""

from __future__ import annotations

import collections
import hashlib
import os
import queue

import pytest
from twisted.internet.task import Clock

from vmcontroller.protocol import (
    Data,
    DataAck,
    DataEnd,
    DataSync,
    ErrorCode,
    TransferDone,
    TransferFailed,
)
from vmcontroller.transfer import (
    Sha256,
    ThreadedSha256,
    TransferError,
    TransferReceiver,
    TransferSender,
    digest_for,
    temp_path_for,
)


class Link:
    """Two one-way queues between a sender and a receiver; tests pump them."""

    def __init__(self, tmp_path, size=10_000, chunk=1000, window=3, max_size=None, ack_every=4):
        self.clock = Clock()
        self.source = tmp_path / "src"
        self.source.write_bytes(os.urandom(size))
        self.target = tmp_path / "dst"
        self.to_receiver = collections.deque()
        self.to_sender = collections.deque()
        self.sender = TransferSender(
            "t", str(self.source), lambda m, p: self.to_receiver.append((m, bytes(p))),
            None, self.clock, chunk_size=chunk, window=window, sync_after=2.0,
            give_up_after=30.0,
        )  # fmt: skip
        self.receiver = TransferReceiver(
            "t", str(self.target), lambda m, p: self.to_sender.append((m, p)), self.clock,
            max_size=max_size, ack_every=ack_every,
        )  # fmt: skip

    def pump(self, drop=lambda m: False):
        """Deliver everything both ways, one reactor turn after another, until quiet."""
        moved = True
        while moved:
            moved = False
            self.clock.advance(0)  # end of the turn: the receiver's coalesced ack goes out
            while self.to_receiver:
                message, payload = self.to_receiver.popleft()
                moved = True
                if drop(message):
                    continue
                if isinstance(message, Data):
                    self.receiver.on_data(message, payload)
                elif isinstance(message, DataSync):
                    self.receiver.on_sync(message)
                elif isinstance(message, DataEnd):
                    self.receiver.on_end(message)
                elif isinstance(message, TransferFailed):
                    self.receiver.on_failed(message)
            while self.to_sender:
                message, _ = self.to_sender.popleft()
                moved = True
                if isinstance(message, DataAck):
                    self.sender.on_ack(message)
                elif isinstance(message, TransferDone):
                    self.sender.on_done(message)
                elif isinstance(message, TransferFailed):
                    self.sender.on_failed(message)


def _result(deferred):
    out = []
    deferred.addBoth(out.append)
    return out[0] if out else None


def test_window_bounds_the_chunks_in_flight(tmp_path):
    link = Link(tmp_path)
    link.sender.start(0)
    assert [m.offset for m, _ in link.to_receiver] == [0, 1000, 2000]
    link.pump()
    result = _result(link.sender.done)
    assert result.size == 10_000
    assert result.sha256 == hashlib.sha256(link.source.read_bytes()).hexdigest()
    assert link.target.read_bytes() == link.source.read_bytes()
    assert _result(link.receiver.done) == result
    assert not os.path.exists(temp_path_for(str(link.target), "t"))


def _deliver_to_receiver(link):
    """One reactor turn of the receiver: every queued message, then the turn ends."""
    while link.to_receiver:
        message, payload = link.to_receiver.popleft()
        link.receiver.on_data(message, payload)


def test_chunks_of_one_turn_share_an_ack_and_ack_every_caps_them(tmp_path):
    link = Link(tmp_path, window=10, ack_every=4)
    link.sender.start(0)
    _deliver_to_receiver(link)  # ten chunks in one turn
    assert [m.offset for m, _ in link.to_sender] == [4000, 8000]  # at 4 and 8 chunks
    link.clock.advance(0)  # the turn ends: the last two together
    assert [m.offset for m, _ in link.to_sender] == [4000, 8000, 10_000]
    assert not any(m.sync for m, _ in link.to_sender)
    link.pump()
    assert _result(link.sender.done).size == 10_000
    assert link.receiver.acks_sent == 3
    assert link.target.read_bytes() == link.source.read_bytes()


def test_a_lone_chunk_is_acknowledged_when_the_turn_ends(tmp_path):
    link = Link(tmp_path, window=1)
    link.sender.start(0)
    _deliver_to_receiver(link)
    assert not link.to_sender  # not yet: more chunks of this turn could follow
    link.clock.advance(0)
    assert [(m.offset, m.sync) for m, _ in link.to_sender] == [(1000, False)]
    link.pump()
    assert _result(link.sender.done).size == 10_000
    assert link.receiver.acks_sent == 10


def test_lost_cumulative_acks_resume_from_the_receivers_offset(tmp_path):
    link = Link(tmp_path, window=5)
    link.sender.start(0)
    _deliver_to_receiver(link)
    link.clock.advance(0)
    assert [m.offset for m, _ in link.to_sender] == [4000, 5000]
    link.to_sender.clear()  # both acks lost
    assert link.receiver.offset == 5000 and link.sender.acked == 0
    link.clock.advance(2.0)  # the sender stalls and asks where the receiver stands
    link.pump()
    assert _result(link.sender.done).size == 10_000
    assert link.sender.bytes_sent == 10_000  # rewound to 5000, not to the last ack (0)
    assert link.target.read_bytes() == link.source.read_bytes()


def test_a_failed_transfer_sends_no_late_ack(tmp_path):
    link = Link(tmp_path, window=2)
    link.sender.start(0)
    _deliver_to_receiver(link)
    link.receiver.fail(ErrorCode.IO_ERROR, "disk gone")
    link.clock.advance(0)
    assert [type(m) for m, _ in link.to_sender] == [TransferFailed]
    assert _result(link.receiver.done).value.code == ErrorCode.IO_ERROR


def test_a_lost_chunk_is_resent_after_a_gap_sync(tmp_path):
    link = Link(tmp_path)
    link.sender.start(0)
    dropped = []

    def drop_first_1000(message):
        if isinstance(message, Data) and message.offset == 1000 and not dropped:
            dropped.append(message)
            return True
        return False

    link.pump(drop_first_1000)
    assert dropped and _result(link.sender.done).size == 10_000
    assert link.target.read_bytes() == link.source.read_bytes()


def test_stalled_sender_resyncs_and_rewinds(tmp_path):
    link = Link(tmp_path)
    link.sender.start(0)
    link.pump(drop=lambda m: isinstance(m, Data) and m.offset >= 2000)  # everything lost
    assert link.receiver.offset == 2000 and not link.sender.done.called
    link.clock.advance(2.0)  # no progress for sync_after: ask the receiver
    assert isinstance(link.to_receiver[0][0], DataSync)
    link.pump()
    assert link.target.read_bytes() == link.source.read_bytes()
    assert link.sender.bytes_sent <= 10_000 + 3 * 1000


def test_a_lost_end_is_repeated_and_answered_again(tmp_path):
    link = Link(tmp_path, size=2500)
    link.sender.start(0)
    link.pump(drop=lambda m: isinstance(m, DataEnd))
    assert not link.sender.done.called
    link.clock.advance(2.0)
    link.pump()
    assert _result(link.sender.done).size == 2500


def test_checksum_mismatch_fails_both_sides_and_leaves_no_file(tmp_path):
    link = Link(tmp_path, size=3000)
    link.sender.start(0)
    link.pump(drop=lambda m: isinstance(m, DataEnd))
    link.receiver.on_end(DataEnd("t", 3000, "0" * 64))
    link.pump()
    failure = _result(link.receiver.done)
    assert failure.check(TransferError) and failure.value.code == ErrorCode.CHECKSUM
    assert _result(link.sender.done).value.code == ErrorCode.CHECKSUM
    assert not link.target.exists()
    assert not os.path.exists(temp_path_for(str(link.target), "t"))


def test_size_limit_stops_the_receiver(tmp_path):
    link = Link(tmp_path, size=5000, max_size=4000)
    link.sender.start(0)
    link.pump()
    assert _result(link.receiver.done).value.code == ErrorCode.TOO_LARGE
    assert _result(link.sender.done).value.code == ErrorCode.TOO_LARGE
    assert not link.target.exists()


def test_silence_gives_up_eventually(tmp_path):
    link = Link(tmp_path)
    link.sender.start(0)
    link.to_receiver.clear()
    link.clock.pump([2.0] * 16)
    assert _result(link.sender.done).check(TransferError)


def test_bad_parameters_and_acks_are_refused(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ValueError):
        TransferSender("t", str(tmp_path / "f"), print, None, Clock(), chunk_size=0)
    with pytest.raises(ValueError, match="ack_every must be >= 1 chunk, got 0"):
        TransferReceiver("t", str(tmp_path / "g"), print, Clock(), ack_every=0)
    link = Link(tmp_path, size=100)
    link.sender.start(0)
    link.sender.on_ack(DataAck("t", 500))
    assert _result(link.sender.done).value.code == ErrorCode.BAD_REQUEST


# --- digests -------------------------------------------------------------------


def _via_queue():
    """A call_from_thread that hands calls to the test thread through a queue."""
    calls = queue.Queue()
    return calls, lambda function, *args: calls.put((function, args))


def _run_next(calls):
    function, args = calls.get(timeout=30)
    function(*args)


def test_threaded_sha256_matches_hashlib_in_order():
    calls, call_from_thread = _via_queue()
    digest = ThreadedSha256(call_from_thread)
    pieces = [os.urandom(n) for n in (1, 5000, 300_000, 0, 77)]
    for piece in pieces:
        digest.update(memoryview(piece))
    first, second = digest.hexdigest(), digest.hexdigest()
    assert not first.called  # not before the reactor runs the callback
    _run_next(calls)
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()
    assert _result(first) == _result(second) == expected
    assert _result(digest.hexdigest()) == expected
    with pytest.raises(RuntimeError, match="already finished"):
        digest.update(b"late")


def test_threaded_sha256_wakes_its_thread_once_per_batch():
    calls, call_from_thread = _via_queue()
    digest = ThreadedSha256(call_from_thread, batch_bytes=1000)
    handed_over = []

    class CountingQueue(queue.SimpleQueue):
        def put(self, item):
            handed_over.append(item)
            super().put(item)

    digest._queue = CountingQueue()
    pieces = [os.urandom(400) for _ in range(7)]
    digest.update(pieces[0])
    digest.update(pieces[1])
    assert digest._thread is None and not handed_over  # 800 bytes: still gathering
    for piece in pieces[2:]:
        digest.update(piece)
    assert [len(batch) for batch in handed_over] == [3, 3]  # 1200 bytes each; 400 wait
    result = digest.hexdigest()
    _run_next(calls)
    assert _result(result) == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_threaded_sha256_of_nothing_needs_no_thread():
    calls, call_from_thread = _via_queue()
    digest = ThreadedSha256(call_from_thread)
    assert _result(digest.hexdigest()) == hashlib.sha256().hexdigest()
    digest.close()
    assert calls.empty()


def test_threaded_sha256_closed_early_never_reports():
    calls, call_from_thread = _via_queue()
    digest = ThreadedSha256(call_from_thread)
    digest.update(b"x" * 100_000)
    digest.close()
    digest.close()
    assert not digest.hexdigest().called
    assert calls.empty()


def test_digest_for_a_clock_hashes_in_place():
    assert isinstance(digest_for(Clock()), Sha256)
    assert isinstance(digest_for(_ThreadedClock()), ThreadedSha256)


class _ThreadedClock(Clock):
    """A Clock that can also take calls from threads (stands for a reactor)."""

    def __init__(self):
        super().__init__()
        self.calls, self.callFromThread = _via_queue()


def test_transfer_with_threaded_digests_on_both_sides(tmp_path):
    """The real threads: DataEnd waits for the sender's hash, commit for the receiver's."""
    link = Link(tmp_path, size=300_000, chunk=64 * 1024, window=2)
    sender_clock, receiver_clock = _ThreadedClock(), _ThreadedClock()
    link.sender._hasher = digest_for(sender_clock)
    link.receiver._hasher = digest_for(receiver_clock)
    link.sender.start(0)
    link.pump()
    assert not link.sender.done.called and not link.receiver.done.called
    _run_next(sender_clock.calls)  # the sender's hash: DataEnd goes out
    link.pump()
    assert not link.receiver.done.called
    _run_next(receiver_clock.calls)  # the receiver's hash: commit and confirm
    link.pump()
    expected = hashlib.sha256(link.source.read_bytes()).hexdigest()
    assert _result(link.sender.done).sha256 == expected
    assert _result(link.receiver.done).sha256 == expected
    assert link.target.read_bytes() == link.source.read_bytes()


def test_sender_waits_for_the_connection_to_drain(tmp_path):
    """With when_drained, a chunk goes out only when the connection takes it at once."""
    link = Link(tmp_path, window=5)
    waiting = []
    drained = [True]

    def when_drained(callback):
        if drained[0]:
            return True
        waiting.append(callback)
        return False

    link.sender._when_drained = when_drained
    link.sender.start(0)
    assert [m.offset for m, _ in link.to_receiver] == [0, 1000, 2000, 3000, 4000]
    link.to_receiver.clear()
    drained[0] = False  # the connection is backed up
    link.sender.on_ack(DataAck("t", 2000))  # room in the window, but not on the wire
    assert not link.to_receiver and len(waiting) == 1
    link.sender.on_ack(DataAck("t", 3000))  # no second wait while one is pending
    assert not link.to_receiver and len(waiting) == 1
    drained[0] = True
    waiting.pop()()  # the connection drained: the window refills
    assert [m.offset for m, _ in link.to_receiver] == [5000, 6000, 7000]


def test_a_rewind_forgets_a_drain_wait_of_a_lost_connection(tmp_path):
    link = Link(tmp_path, window=2)
    backed_up = [False]
    link.sender._when_drained = lambda callback: not backed_up[0]
    link.sender.start(0)
    backed_up[0] = True
    link.to_receiver.clear()
    link.sender.on_ack(DataAck("t", 2000))  # waits; the callback is never called
    assert not link.to_receiver
    backed_up[0] = False  # reconnected: the receiver says where to resume
    link.sender.on_ack(DataAck("t", 2000, sync=True))
    assert [m.offset for m, _ in link.to_receiver] == [2000, 3000]
    link.pump()
    assert _result(link.sender.done).size == 10_000
    assert link.target.read_bytes() == link.source.read_bytes()
