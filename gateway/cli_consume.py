"""`carbon-gateway consume` (issue 12 item 3): the reference consumer, gateways -> PostgreSQL.

    carbon-gateway consume --broker mqtt://broker:1883 --db postgresql://user@db/carbon [--group NAME]

Start several with the same --group to split the load (MQTT 5 shared subscriptions). The schema `carbon`
is created and migrated by the command. See gateway/central/ and docs/architecture.md.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
from typing import Any

log = logging.getLogger("gateway.central")


def add_parser(sub: Any) -> None:
    c = sub.add_parser("consume", help="reference consumer: shared MQTT subscription -> PostgreSQL, holes replayed")
    c.add_argument("--broker", required=True, help="mqtt://host:port (mqtts:// for TLS; user:password@ allowed)")
    c.add_argument("--db", required=True, help="postgresql://user@host/database (libpq connection string)")
    c.add_argument("--group", default="carbon", help="shared subscription group: members split the messages")
    c.add_argument("--prefix", default="carbon", help="the gateways' mqtt.topic_prefix")
    c.add_argument("--name", help="this member's name (default host-pid); in carbon.messages.consumer")
    c.add_argument("--write", choices=["copy", "insert"], default="copy", help="COPY (default) or batched INSERT")
    c.add_argument("--batch-max", type=int, default=500, help="messages per transaction at most")
    c.add_argument("--hole-check-s", type=float, default=2.0)
    c.add_argument("--hole-grace-s", type=float, default=5.0,
                   help="a hole is asked for once the message after it is this old (out-of-order backlog)")
    c.add_argument("--replay-chunk", type=int, default=1000,
                   help="seqs per replay request at most (one request per hole at a time)")
    c.add_argument("--lag-report-s", type=float, default=10.0)
    c.add_argument("--duration", type=float, help="stop after this many seconds")


def run(args: argparse.Namespace) -> int:
    from urllib.parse import urlparse

    try:
        import psycopg
    except ImportError:
        print("consume needs psycopg 3: pip install 'carbon-gateway[central]'", file=sys.stderr)
        return 2

    from gateway.central.consumer import BrokerRefused, Consumer, ConsumerOptions

    if urlparse(args.broker).scheme not in ("mqtt", "mqtts"):
        print(f"--broker: {args.broker!r} is not an mqtt:// or mqtts:// URL", file=sys.stderr)
        return 2
    opts = ConsumerOptions(broker=args.broker, db=args.db, group=args.group, prefix=args.prefix, write=args.write,
                           batch_max=args.batch_max, hole_check_s=args.hole_check_s, hole_grace_s=args.hole_grace_s,
                           lag_report_s=args.lag_report_s, replay_chunk=args.replay_chunk)
    if args.name:
        opts.name = args.name
    stop = threading.Event()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack on stderr (a hang)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        consumer = Consumer(opts)
    except psycopg.Error as err:
        print(f"--db: cannot use the database: {_one_line(err)}", file=sys.stderr)
        return 1
    try:
        consumer.run(stop, args.duration)
    except BrokerRefused as err:
        print(str(err), file=sys.stderr)
        return 3
    except psycopg.Error as err:
        print(f"consumer stopped: database error: {_one_line(err)}", file=sys.stderr)
        return 1
    finally:
        consumer.close()
    s = consumer.stats
    log.info("consumer %s stopped: %d messages received, %d written, %d duplicates, %d replayed, %d bad",
             opts.name, s.received, s.written, s.duplicates, s.replayed, s.bad)
    return 0


def _one_line(err: BaseException) -> str:
    """libpq's messages span lines (a hint on the next one): one line, as every error of the CLI."""
    return " ".join(str(err).split())
