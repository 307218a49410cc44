"""`carbon-gateway estimate`: queue a best available estimate for a point's missing hours (issue 10 item 9).

The value comes from outside the gateway (a mass or energy balance, a plant model, a lab analysis: 40 CFR
98.35(b)(2), Reg. (EU) 2018/2066 Art. 45(4)); the command records who made it, on what basis and how, and
queues it for the running gateway like a correction (gateway/estimates.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    e = sub.add_parser("estimate", help="record a best available estimate for missing hours (a new version)")
    e.add_argument("--config", type=Path, default=Path("config"), help="configuration directory (default: config)")
    e.add_argument("--store", type=Path, help="store path (default: store.path of the config)")
    e.add_argument("--instrument", required=True)
    e.add_argument("--point", required=True)
    e.add_argument("--from", dest="start", required=True, help="first hour covered, ISO 8601 with zone")
    e.add_argument("--to", dest="end", required=True, help="end of the last hour covered (exclusive), ISO 8601")
    e.add_argument("--value", required=True, type=float, help="the estimate, in the point's reporting unit")
    e.add_argument("--author", required=True)
    e.add_argument("--basis", required=True, help="the data it rests on (e.g. 'steam flow and heat rate')")
    e.add_argument("--method", required=True, help="how it was computed (e.g. 'energy balance, plan C.5')")
    e.add_argument("--force", action="store_true", help="accept a value outside the measuring range")


def run(args: argparse.Namespace) -> int:
    from gateway.cli import _load
    from gateway.estimates import submit

    cfg = _load(args.config)
    path = submit(cfg, args.store or cfg.settings.store.path, instrument=args.instrument, point=args.point,
                  start=args.start, end=args.end, value=args.value, author=args.author, basis=args.basis,
                  method=args.method, force=args.force)
    print(f"estimate queued: {path} (the running gateway stores it and re-issues the substitutes it covers)")
    return 0
