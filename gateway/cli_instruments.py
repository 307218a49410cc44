"""`carbon-gateway instruments`: the instrument ledger and the calibration plan (issue 11 item 6).

The ledger is what standard 10.1.3 d and 10.5.4 ask a plant to keep for every instrument: name, model,
accuracy class, location, measuring range, emission source and boundary level, status, the last
calibration or verification, its due date, certificate, agency, method and specification, and whether it is
under mandatory verification. It is read from the instrument files (the configuration is the ledger's
single source; nothing here reads the store), so it works with or without a running gateway.

`--due 30d` lists only the instruments falling due within that many days or already overdue, and those
without any calibration record (their readings carry calibration `unknown`), sorted by due date, overdue
first. Retired instruments are in the ledger but never due (10.5.5). Dates are calendar dates at the
site (`gateway.timezone`), as the readings' calibration status is.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.calibration import due_date
from gateway.errors import ConfigError
from gateway.instruments import InstrumentSpec

FIELDS = ("id", "name", "kind", "manufacturer", "model", "serial_number", "location", "emission_source",
          "source_category", "boundary_level", "accuracy_class", "measuring_range", "status", "last_calibration",
          "interval_months", "due_date", "days_left", "calibration_status", "certificate", "agency", "method",
          "specification", "result", "mandatory_verification", "file")
TABLE = (("id", "ID"), ("name", "NAME"), ("model", "MODEL"), ("serial_number", "SERIAL"), ("location", "LOCATION"),
         ("status", "STATUS"), ("last_calibration", "LAST CAL"), ("due_date", "DUE"), ("days_left", "DAYS"),
         ("calibration_status", "CAL"), ("certificate", "CERTIFICATE"), ("agency", "AGENCY"),
         ("mandatory_verification", "MANDATORY"))
_DUE = re.compile(r"^(\d{1,5})([dwm]?)$")


def parse_due(text: str) -> int:
    """`30d`, `30`, `6w` or `3m` (a month counted as 30 days) -> days; ConfigError naming --due otherwise."""
    m = _DUE.match(text.strip().lower())
    if not m:
        raise ConfigError(f"'{text}' is not a number of days: write e.g. 30d, 6w or 3m", file="--due")
    n, unit = int(m.group(1)), m.group(2) or "d"
    return n * {"d": 1, "w": 7, "m": 30}[unit]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("instruments", help="the instrument ledger; --due lists calibrations falling due or overdue")
    p.add_argument("--config", type=Path, default=Path("config"), help="configuration directory (default: config)")
    p.add_argument("--due", metavar="DAYS",
                   help="only instruments due within DAYS (30d, 6w, 3m) or overdue, or without a record; by due date")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--today", type=date.fromisoformat, help=argparse.SUPPRESS)  # tests: the site's date


def ledger_row(spec: InstrumentSpec, today: date, due_soon_days: int) -> dict[str, Any]:
    """One instrument's ledger line. `calibration_status` is today's, with the rules of gateway/calibration.py."""
    m = spec.model
    cal = m.calibration
    due = due_date(cal.last_date, cal.interval_months, cal.due_date) if cal else None
    last = cal.last_date if cal else None
    if due is None or (last is not None and today < last):
        status = "unknown"
    elif today > due:
        status = "expired"
    elif (due - today).days <= due_soon_days:
        status = "due_soon"
    else:
        status = "valid"
    rng = m.measuring_range
    return {
        "id": m.id, "name": m.name, "kind": m.kind.value, "manufacturer": m.manufacturer, "model": m.model,
        "serial_number": m.serial_number, "location": m.location, "emission_source": m.emission_source,
        "source_category": m.source_category.value, "boundary_level": m.boundary_level.value,
        "accuracy_class": m.accuracy_class,
        "measuring_range": f"{rng.min:g}..{rng.max:g} {rng.unit}" if rng else "",
        "status": m.status.value,
        "last_calibration": last.isoformat() if last else None,
        "interval_months": cal.interval_months if cal else None,
        "due_date": due.isoformat() if due else None,
        "days_left": (due - today).days if due else None,
        "calibration_status": status,
        "certificate": cal.certificate if cal else None,
        "agency": cal.agency if cal else None,
        "method": cal.method.value if cal and cal.method else None,
        "specification": cal.specification if cal else "",
        "result": cal.result.value if cal and cal.result else None,
        "mandatory_verification": bool(cal and cal.mandatory_verification),
        "file": spec.source_file,
    }


def select_due(rows: Sequence[dict[str, Any]], within_days: int) -> list[dict[str, Any]]:
    """Due within `within_days` or overdue, and those without a due date; retired ones never.
    Sorted by due date (overdue first), instruments without a record last, then by id."""
    chosen = [r for r in rows if r["status"] != "retired"
              and (r["days_left"] is None or r["days_left"] <= within_days)]
    return sorted(chosen, key=lambda r: (r["due_date"] is None, r["due_date"] or "", r["id"]))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def render(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r[k] is None else r[k] for k in FIELDS})
        return buf.getvalue()
    cells = [[title for _, title in TABLE]] + [[_cell(r[k]) for k, _ in TABLE] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in cells)


def run(args: argparse.Namespace) -> int:
    from gateway.cli import _load

    within = parse_due(args.due) if args.due is not None else None
    cfg = _load(args.config)
    st = cfg.settings
    today = args.today or datetime.now(ZoneInfo(st.gateway.timezone)).date()
    rows = [ledger_row(spec, today, st.limits.due_soon_days) for spec in cfg.instruments]
    rows = select_due(rows, within) if within is not None else sorted(rows, key=lambda r: r["id"])
    sys.stdout.write(render(rows, args.format))
    if args.format == "table":
        what = f"due within {within} days or overdue" if within is not None else "in the ledger"
        overdue = sum(1 for r in rows if r["calibration_status"] == "expired" and r["status"] != "retired")
        print(f"{len(rows)} instruments {what} on {today} ({st.gateway.timezone}); {overdue} overdue",
              file=sys.stderr)
    return 0
