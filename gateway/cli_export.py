"""`carbon-gateway export`: a period's raw readings, gap records, aggregates, substitutes (with their traces)
and corrections from the local store, with the hash-chain proof of the exported range and a standalone
script that checks it (issue 12 item 5; gateway/export.py, docs/hash-chain.md "Export")."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, GatewayError, StoreError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="write a period's records with the hash-chain proof (for auditors)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, default=Path("config"),
                       help="configuration directory whose store.path is used (default: config)")
    where.add_argument("--store", type=Path, help="the store file (default: store.path of the config)")
    p.add_argument("--from", dest="from_", required=True, metavar="TIME", help="start (ISO 8601 with a zone)")
    p.add_argument("--to", required=True, metavar="TIME", help="end, inclusive (ISO 8601 with a zone)")
    p.add_argument("--instrument", action="append", metavar="ID", help="only this instrument (repeatable)")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write (new or empty)")


def run(args: argparse.Namespace) -> int:
    from gateway.corrections import parse_time
    from gateway.export import ExportError, export
    from gateway.store_check import _open_ro

    gateway_id = ""
    if args.store is not None:
        path: Path = args.store
    else:
        from gateway.cli import _load

        cfg = _load(args.config)
        path, gateway_id = cfg.settings.store.path, cfg.settings.gateway.id
    lo, hi = parse_time(args.from_), parse_time(args.to)
    db = _open_ro(path)
    try:
        db.execute("BEGIN")  # one snapshot while the gateway writes on
        summary = export(db, args.out, lo_ms=lo, hi_ms=hi, instruments=args.instrument, fmt=args.format,
                         gateway=gateway_id)
    except ExportError as err:
        if err.usage:
            raise ConfigError(str(err), file="carbon-gateway export") from None
        raise GatewayError(f"{path}: {err}") from None
    except sqlite3.Error as err:
        raise StoreError(f"{path}: cannot read the store: {err}") from None
    finally:
        db.close()
    for name, n in summary.files.items():
        print(f"{args.out / name}: {n} rows")
    for name, (pos, h) in summary.heads.items():
        print(f"{args.out / 'proof.json'}: {name} chain up to {pos} {h}")
    print(f"{args.out}: check it anywhere with `python3 {args.out / 'verify_export.py'}`")
    return 0
