"""`carbon-gateway verify`: walk the store's hash chains and name the first broken link (issue 11 item 1).

Exit 0 when every chain checks, 1 with one line naming the record, its table and what differs, 4 when the
store cannot be read. Works while the gateway runs (a read-only snapshot). docs/hash-chain.md.
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, StoreError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("verify", help="check the hash chain of the store: exit 0 ok, 1 names the first broken link")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, default=Path("config"),
                       help="configuration directory whose store.path is used (default: config)")
    where.add_argument("--store", type=Path, help="the store file (default: store.path of the config)")
    p.add_argument("--from", dest="from_", metavar="TIME", help="only the links holding records from this time "
                   "(ISO 8601 with a zone), chained on from the stored hash of the link before")
    p.add_argument("--to", metavar="TIME", help="only the links holding records up to this time (ISO 8601)")
    p.add_argument("--expect", action="append", default=[], metavar="CHAIN:POS:HASH",
                   help="a hash the gateway published (a message's chain, a status head), e.g. "
                        "readings:120345:fdd8…: it must be the store's at that position (repeatable)")


def run(args: argparse.Namespace) -> int:
    from gateway.chain_verify import expectation, verify
    from gateway.corrections import parse_time
    from gateway.store_check import _open_ro

    if args.store is not None:
        path: Path = args.store
    else:
        from gateway.cli import _load

        path = _load(args.config).settings.store.path
    expects = []
    for text in args.expect:
        name, _, rest = text.partition(":")
        pos, _, digest = rest.partition(":")
        if not pos.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise ConfigError(f"--expect {text!r}: give CHAIN:POS:HASH, e.g. readings:120345:<64 hex digits>",
                              file="carbon-gateway verify")
        expects.append((name, int(pos), digest))
    lo = parse_time(args.from_) if args.from_ else None
    hi = parse_time(args.to) if args.to else None
    db = _open_ro(path)
    try:
        db.execute("BEGIN")  # one snapshot for the whole walk, while the gateway goes on writing
        result = verify(db, lo_ms=lo, hi_ms=hi)
        unmet = [] if result.problem else [m for e in expects if (m := expectation(db, result, *e))]
    except ValueError as err:
        raise StoreError(f"{path}: {err}") from None
    except sqlite3.Error as err:
        raise StoreError(f"{path}: cannot read the store: {err}") from None
    finally:
        db.close()
    if result.problem is not None:
        print(f"{path}: BROKEN: {result.problem.line()}")
        return 1
    for report in result.reports:
        print(f"{path}: {report.line()}")
    if unmet:
        print(f"{path}: BROKEN: {unmet[0]}")
        return 1
    for name, pos, _ in expects:
        print(f"{path}: {name} chain: the published hash at {pos} is the store's")
    print(f"{path}: ok")
    return 0
