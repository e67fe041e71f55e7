"""``trickle_handler stats``: what the daemon did, per hour, and why messages earned nothing.

Three views, each from rows that exist for another reason where possible:

* messages per hour (by the hour the scheduler stored them): received,
  credited, rejected, still pending — from ``msg_from_host`` (``handled`` is
  0 pending, 1 credited or nothing to credit, 2 rejected);
* rejections and notes by reason code — from our ``trickle_reason`` table
  (:mod:`trickle_handler.reasons` lists the codes);
* credit granted per hour (by the hour it was granted) and the CPU seconds
  credited — from the ledger table ``trickle_credit_hour``, one row per hour
  and variety, that :func:`record_batch` adds each batch to *inside the
  batch's transaction*, so the ledger is exactly-once like the credit itself.
  BOINC keeps no per-grant record (only running totals and averages), so
  without the ledger per-hour credit cannot be known; hours before the
  ledger existed say so instead of guessing.

Times are the server's clock (Unix seconds); hours are shown in UTC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from trickle_handler.config import ConfigError, locate
from trickle_handler.db import (
    BadDatabaseURL,
    Database,
    DatabaseError,
    MySQLDatabase,
    open_database,
    parse_database_url,
)
from trickle_handler.reasons import Reason
from trickle_handler.schema import LEDGER_DDL

if TYPE_CHECKING:
    from trickle_handler.batch import BatchStats

LEDGER_TABLE = "trickle_credit_hour"
HOUR = 3600
#: Hours shown when ``--hours`` is not given.
DEFAULT_HOURS = 24
EXIT_OK = 0
EXIT_ERROR = 1

_COUNTERS = ("batches", "messages", "credited", "rejected", "cpu_seconds", "credit")


def ensure_ledger(db: Database) -> None:
    """Create the ledger table when missing (safe on a production database)."""
    engine = " ENGINE=InnoDB" if isinstance(db, MySQLDatabase) else ""
    db.execute(LEDGER_DDL.format(engine=engine))


def hour_of(when: float) -> int:
    """The start (Unix seconds) of the hour *when* falls in."""
    return int(when) // HOUR * HOUR


def record_batch(db: Database, variety: str, stats: BatchStats, now: float) -> None:
    """Add one handled batch to the ledger, in the caller's (the batch's) transaction.

    Daemons sharing the work (``--mod``) may add to the same hour at once: the
    row is inserted or incremented in one statement, never read first.
    """
    if not stats.messages:
        return
    values = [hour_of(now), variety, 1, stats.messages, stats.credited, stats.rejected,
              stats.seconds, stats.credit]
    columns = ", ".join(("hour", "variety", *_COUNTERS))
    insert = f"INSERT INTO {LEDGER_TABLE} ({columns}) VALUES ({', '.join('?' * len(values))})"
    if isinstance(db, MySQLDatabase):
        adds = ", ".join(f"{c} = {c} + VALUES({c})" for c in _COUNTERS)
        db.execute(f"{insert} ON DUPLICATE KEY UPDATE {adds}", values)
    else:
        adds = ", ".join(f"{c} = {c} + excluded.{c}" for c in _COUNTERS)
        db.execute(f"{insert} ON CONFLICT (hour, variety) DO UPDATE SET {adds}", values)


@dataclass
class HourStats:
    """One hour of the view. ``credit``/``cpu_seconds`` are None when the ledger has no row."""

    hour: int
    received: int = 0
    credited: int = 0
    rejected: int = 0
    pending: int = 0
    credit: float | None = None
    cpu_seconds: float | None = None


@dataclass
class TrickleStats:
    """Everything ``trickle_handler stats`` shows."""

    variety: str
    since: int
    until: int
    hours: list[HourStats] = field(default_factory=list)
    rejections: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    ledger: bool = False

    @property
    def credit_total(self) -> float:
        return sum(h.credit or 0.0 for h in self.hours)


def collect(db: Database, variety: str, since: int, until: int) -> TrickleStats:
    """Read the three views for ``[since, until)`` (Unix seconds)."""
    if until <= since:
        raise ValueError(f"empty time range: since {since} is not before until {until}")
    stats = TrickleStats(variety, since, until, ledger=db.table_exists(LEDGER_TABLE))
    hours: dict[int, HourStats] = {}

    def at(hour: int) -> HourStats:
        return hours.setdefault(hour, HourStats(hour))

    rows = db.query(
        "SELECT create_time - create_time % 3600, handled, COUNT(*) FROM msg_from_host"
        " WHERE variety = ? AND create_time >= ? AND create_time < ?"
        " GROUP BY create_time - create_time % 3600, handled",
        [variety, since, until])
    for hour, handled, count in rows:
        row = at(int(hour))
        row.received += int(count)
        if int(handled) == 0:
            row.pending += int(count)
        elif int(handled) == 2:
            row.rejected += int(count)
        else:
            row.credited += int(count)
    if stats.ledger:
        for hour, credit, seconds in db.query(
                f"SELECT hour, credit, cpu_seconds FROM {LEDGER_TABLE}"
                " WHERE variety = ? AND hour >= ? AND hour < ?",
                [variety, hour_of(since), until]):
            row = at(int(hour))
            row.credit, row.cpu_seconds = float(credit), float(seconds)
    if db.table_exists("trickle_reason"):
        for code, count in db.query(
                "SELECT r.reason, COUNT(*) FROM trickle_reason r"
                " JOIN msg_from_host m ON m.id = r.msgid"
                " WHERE m.variety = ? AND r.create_time >= ? AND r.create_time < ?"
                " GROUP BY r.reason", [variety, since, until]):
            target = stats.notes if _is_note(code) else stats.rejections
            target[str(code)] = int(count)
    stats.hours = [hours[h] for h in sorted(hours)]
    return stats


def _is_note(code: str) -> bool:
    try:
        return not Reason(code).is_rejection
    except ValueError:  # a code from a newer daemon: count it as a rejection
        return False


def render(stats: TrickleStats) -> str:
    """The view as text for a terminal."""
    start = time.strftime("%Y-%m-%d %H:%M", time.gmtime(stats.since))
    end = time.strftime("%Y-%m-%d %H:%M", time.gmtime(stats.until))
    lines = [f"trickle statistics, variety {stats.variety}, {start} to {end} UTC", ""]
    if not stats.hours:
        lines.append("no messages and no credit in this period")
    else:
        lines.append(f"{'hour (UTC)':<17} {'received':>9} {'credited':>9} {'rejected':>9} "
                     f"{'pending':>8} {'credit granted':>15} {'CPU h credited':>15}")
        for h in stats.hours:
            credit = "-" if h.credit is None else f"{h.credit:.2f}"
            cpu = "-" if h.cpu_seconds is None else f"{h.cpu_seconds / HOUR:.2f}"
            lines.append(f"{time.strftime('%Y-%m-%d %H:00', time.gmtime(h.hour)):<17} "
                         f"{h.received:>9} {h.credited:>9} {h.rejected:>9} {h.pending:>8} "
                         f"{credit:>15} {cpu:>15}")
        total = sum(h.received for h in stats.hours)
        lines.append(f"{'total':<17} {total:>9} {sum(h.credited for h in stats.hours):>9} "
                     f"{sum(h.rejected for h in stats.hours):>9} "
                     f"{sum(h.pending for h in stats.hours):>8} {stats.credit_total:>15.2f}")
    if not stats.ledger:
        lines += ["", f"credit per hour: not recorded (no {LEDGER_TABLE} table; the daemon "
                      "fills it once record_batch is wired into its batches)"]
    for title, counts in (("rejected messages by reason", stats.rejections),
                          ("credited with a note (less than claimed)", stats.notes)):
        lines += ["", f"{title}:"]
        if not counts:
            lines.append("  none")
        for code, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {code:<24} {count:>8}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trickle_handler stats", allow_abbrev=False,
        description="Credit granted per hour and messages rejected by reason.")
    p.add_argument("--project_dir", "-project_dir", metavar="DIR", help="the BOINC project directory")
    p.add_argument("--db", "-db", metavar="URL",
                   help="mysql://user:pw@host:port/db or sqlite:///path (overrides config.xml)")
    p.add_argument("--variety", default="cpu_time", help="message variety (default cpu_time)")
    p.add_argument("--hours", type=_hours, default=DEFAULT_HOURS,
                   help=f"how many hours back from now (default {DEFAULT_HOURS})")
    p.add_argument("--until", type=_utc_hour, default=None, metavar="YYYY-MM-DDTHH",
                   help="show the hours up to and including this one, UTC (default: now)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _utc_hour(text: str) -> int:
    for layout in ("%Y-%m-%dT%H", "%Y-%m-%d"):
        try:
            parsed = datetime.strptime(text, layout).replace(tzinfo=UTC)
        except ValueError:
            continue
        return int(parsed.timestamp())
    raise argparse.ArgumentTypeError(f"{text!r} is not YYYY-MM-DDTHH or YYYY-MM-DD (UTC)")


def _hours(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of hours") from None
    if not 1 <= value <= 24 * 366:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 to {24 * 366} hours")
    return value


def main(argv: Sequence[str], now: float | None = None) -> int:
    """``trickle_handler stats [options]``; prints the view, returns the exit status."""
    args = build_parser().parse_args(list(argv))
    try:
        db_url = parse_database_url(args.db) if args.db else None
        where = locate(db_url, args.project_dir)
    except (ConfigError, BadDatabaseURL) as exc:
        print(f"trickle_handler stats: {exc}", file=sys.stderr)
        return EXIT_ERROR
    last = args.until if args.until is not None else (time.time() if now is None else now)
    until = hour_of(last) + HOUR
    if where.db.scheme == "sqlite" and not Path(where.db.database).is_file():
        print(f"trickle_handler stats: no database file {where.db.database}", file=sys.stderr)
        return EXIT_ERROR
    db = open_database(where.db)
    try:
        db.connect()
        if not db.table_exists("msg_from_host"):
            print(f"trickle_handler stats: {where.db.redacted()} has no msg_from_host table; "
                  "is it a BOINC project database?", file=sys.stderr)
            return EXIT_ERROR
        stats = collect(db, args.variety, until - args.hours * HOUR, until)
    except DatabaseError as exc:
        print(f"trickle_handler stats: {where.db.redacted()}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        db.close()
    if args.json:
        print(json.dumps({**asdict(stats), "credit_total": stats.credit_total}, indent=1))
    else:
        print(render(stats), end="")
    return EXIT_OK
