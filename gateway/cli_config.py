"""`carbon-gateway config history`: the configurations the gateway ran under (issue 11 item 2), read-only."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from gateway import config_history
from gateway.store_read import add_store_args, open_readonly, store_path


def add_parser(sub: Any) -> None:
    c = sub.add_parser("config", help="configuration history of a store")
    csub = c.add_subparsers(dest="config_command", required=True)
    h = csub.add_parser("history", help="each configuration the gateway ran under: version, when, who, what changed")
    add_store_args(h)
    h.add_argument("--format", choices=["table", "json"], default="table")


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    path = store_path(args)
    db = open_readonly(path)
    try:
        rows = config_history.entries(db)
        used = config_history.usage(db)
    finally:
        db.close()
    out: list[dict[str, Any]] = []
    for e in rows:
        body = e.as_json()
        body["stored"] = used.get(e.version, {"messages": 0, "readings": 0})
        out.append(body)
    if args.format == "json":
        json.dump({"store": str(path), "configurations": out}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    if not out:
        print(f"{path}: no configuration recorded yet (recorded from the first start with schema 7 on)")
        return 0
    header = ("#", "version", "since (UTC)", "cause", "user", "pid", "readings", "changes")
    table = [header] + [(str(b["id"]), b["version"], _time(b["started_ms"]), b["cause"], b["user"], str(b["pid"]),
                         str(b["stored"]["readings"]), b["summary"]) for b in out]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    return 0
