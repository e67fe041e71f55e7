"""``vmcontroller broker``: run the embedded broker as a process of its own.

Prints ``listening on HOST:PORT`` on stdout once it accepts connections
(so a parent that asked for port 0 learns the port), runs until SIGINT or
SIGTERM, then closes every connection and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from vmcontroller.broker.credentials import CredentialsError, generate_credentials
from vmcontroller.broker.server import BrokerConfig, EmbeddedBroker
from vmcontroller.stomp.codec import DEFAULT_MAX_FRAME_SIZE
from vmcontroller.stomp.heap import freeze_startup_objects, reuse_large_buffers

__all__ = ["build_parser", "main", "parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ValueError with the expected form."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(
            f"invalid listen address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:61613"
        )
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmcontroller broker",
        description="Run the embedded STOMP broker (coilmq with vmcontroller's rules).",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:61613", help="HOST:PORT to bind (default %(default)s)"
    )
    parser.add_argument("--credentials", required=True, help="credentials file (JSON)")
    parser.add_argument(
        "--generate",
        metavar="VM_ID",
        nargs="+",
        help="write a new credentials file with a host login and one login per VM, then exit",
    )
    parser.add_argument(
        "--max-frame-size",
        type=int,
        default=DEFAULT_MAX_FRAME_SIZE,
        help="largest accepted frame in bytes (default %(default)s)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vmcontroller broker``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.generate:
        try:
            generate_credentials(args.generate, args.credentials)
        except (ValueError, OSError) as error:
            print(f"vmcontroller broker: {error}", file=sys.stderr)
            return 1
        print(f"wrote {args.credentials}")
        return 0
    reuse_large_buffers()  # this process is only the broker: relayed chunks reuse pages
    try:
        listen = parse_listen(args.listen)
        broker = EmbeddedBroker(
            listen, args.credentials, BrokerConfig(max_frame_size=args.max_frame_size)
        )
        host, port = broker.start()
    except (CredentialsError, ValueError, OSError) as error:
        print(f"vmcontroller broker: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    freeze_startup_objects()  # set up: spare the GC these long-lived objects
    print(f"listening on {host}:{port}", flush=True)
    try:
        stop.wait()
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
