"""One batch of trickles in one transaction: the unit of exactly-once.

Claiming the messages (``handled``), granting their credit to host, user and team, and updating our
per-result state all commit together or not at all. A daemon killed at any point leaves either the
whole batch done or none of it, so a restart neither loses nor doubles credit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from trickle_handler import stats as stats_ledger
from trickle_handler import store
from trickle_handler.credit import NO_PERCENTILES, SpeedPercentiles, grant_average
from trickle_handler.db import Database, RetryableError
from trickle_handler.messages import Trickle, parse_trickle
from trickle_handler.reasons import Reason, RejectedMessage
from trickle_handler.rules import (
    Grant,
    HostRow,
    Message,
    Policy,
    ResultRow,
    assess,
    check_result,
)

#: Default messages per transaction.
DEFAULT_BATCH_SIZE = 1000


@dataclass
class BatchStats:
    """What one batch did, for the per-batch log line and the benchmarks."""

    messages: int = 0
    credited: int = 0
    rejected: int = 0
    seconds: float = 0.0
    credit: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)


#: Receives one line per message: (message, granted or None, reasons, detail).
MessageLog = Callable[[Message, Grant | None, tuple[Reason, ...], str], None]


class BatchHandler:
    """Handles pending messages of one variety (and one ``--mod`` slice), a batch at a time.

    :param db: a connected database.
    :param now: the server clock (seconds since the epoch), read once per batch for the averages.
    """

    def __init__(
        self,
        db: Database,
        now: Callable[[], float],
        variety: str = "cpu_time",
        policy: Policy | None = None,
        mod: tuple[int, int] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        message_log: MessageLog | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.db = db
        self.now = now
        self.variety = variety
        self.policy = policy or Policy()
        self.mod = mod
        self.batch_size = batch_size
        self.message_log = message_log
        self.percentiles: SpeedPercentiles = NO_PERCENTILES

    def refresh_percentiles(self) -> SpeedPercentiles:
        """Re-read the host speed percentiles (outside any batch)."""
        self.db.begin()
        try:
            self.percentiles = store.load_percentiles(self.db)
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return self.percentiles

    def run_batch(self) -> BatchStats:
        """Handle up to ``batch_size`` pending messages in one transaction.

        Raises :class:`~trickle_handler.db.RetryableError` (rolled back, run again) or
        :class:`~trickle_handler.db.ConnectionLostError` (rolled back by the server).
        """
        db = self.db
        db.begin()
        try:
            stats = self._handle(db)
            db.commit()
        except BaseException:
            db.rollback()
            raise
        return stats

    # -- the transaction body --
    def _handle(self, db: Database) -> BatchStats:
        stats = BatchStats()
        messages = store.fetch_pending(db, self.variety, self.batch_size, self.mod)
        if not messages:
            return stats
        stats.messages = len(messages)
        claimed = store.claim(db, [m.id for m in messages])
        if claimed != len(messages):
            raise RetryableError(
                f"another process handled {len(messages) - claimed} of these messages first"
            )

        trickles: dict[int, Trickle | RejectedMessage] = {}
        for msg in messages:
            try:
                trickles[msg.id] = parse_trickle(msg.xml)
            except RejectedMessage as exc:
                trickles[msg.id] = exc
        names = {t.result_name for t in trickles.values() if isinstance(t, Trickle)}
        results = store.results_by_name(db, names) if names else {}

        own: dict[int, int] = {}
        with_runtime: set[int] = set()
        for msg in messages:
            trickle = trickles[msg.id]
            if isinstance(trickle, Trickle):
                result = results.get(trickle.result_name)
                if result is not None and result.hostid == msg.hostid:
                    own[result.id] = result.hostid
                    if trickle.kind == "runtime":
                        with_runtime.add(result.id)
        states = store.lock_states(db, own, with_runtime) if own else {}
        hosts, host_accounts = store.lock_hosts(db, {m.hostid for m in messages})
        user_teams = store.user_teams(db, {h.userid for h in hosts.values()}) if hosts else {}

        now = self.now()
        rejected: list[int] = []
        reason_rows: list[tuple[int, str, int, int, str]] = []
        credited: list[tuple[Message, Grant, HostRow]] = []
        for msg in messages:
            trickle = trickles[msg.id]
            try:
                if isinstance(trickle, RejectedMessage):
                    raise trickle
                host = hosts.get(msg.hostid)
                if host is None:
                    raise RejectedMessage(Reason.UNKNOWN_HOST, f"host {msg.hostid}")
                if host.userid not in user_teams:
                    raise RejectedMessage(Reason.UNKNOWN_USER, f"user {host.userid}")
                result: ResultRow = check_result(msg, results.get(trickle.result_name), self.policy)
                grant = assess(
                    msg, trickle, result, host, states[result.id], self.percentiles, self.policy
                )
            except RejectedMessage as exc:
                rejected.append(msg.id)
                stats.rejected += 1
                stats.reasons[exc.reason.code] += 1
                reason_rows.append(
                    (msg.id, exc.reason.code, msg.hostid, msg.create_time, exc.detail[:255])
                )
                if self.message_log:
                    self.message_log(msg, None, (exc.reason,), exc.detail)
                continue
            _add(host_accounts[host.id], grant.credit, now)
            credited.append((msg, grant, host))

        # Rows only this daemon touches are written first; user and team rows, which other
        # daemons and the validator share, are locked last so they stay locked for least time.
        if rejected:
            store.mark_rejected(db, rejected)
        store.save_states(db, states.values())
        store.save_accounts(db, "host", host_accounts.values())
        users = store.lock_users(db, {host.userid for _, _, host in credited}) if credited else {}
        teamids = {u.link for u in users.values() if u.link}
        teams = store.lock_teams(db, teamids) if teamids else {}
        for msg, grant, host in credited:
            notes = list(grant.notes)
            user = users.get(host.userid)
            if user is not None:  # None only if the user was deleted since it was read above
                _add(user, grant.credit, now)
                if user.link:
                    team = teams.get(user.link)
                    if team is None:
                        notes.append(Reason.UNKNOWN_TEAM)
                    else:
                        _add(team, grant.credit, now)
            stats.credited += 1
            stats.seconds += grant.seconds
            stats.credit += grant.credit
            for note in notes:
                stats.reasons[note.code] += 1
                reason_rows.append((msg.id, note.code, msg.hostid, msg.create_time, ""))
            if self.message_log:
                self.message_log(msg, grant, tuple(notes), "")
        store.save_accounts(db, "user", users.values())
        store.save_accounts(db, "team", teams.values())
        store.save_reasons(db, reason_rows)
        stats_ledger.record_batch(db, self.variety, stats, now)
        return stats


def _add(account: store.Account, credit: float, now: float) -> None:
    """Grant ``credit`` to ``account`` in memory, as BOINC's grant_credit does, one grant at a time."""
    account.average = grant_average(now, credit, account.average)
    account.added += credit
    account.changed = True
