"""`carbon-gateway status`: the technician's view of a gateway (issue 11 item 6), read from the store.

Per instrument: the newest reading (its quality, reason and calibration status), the newest good value of
each point, the open gaps and the backlog (messages not yet acknowledged by the broker); for the store its
size, backlog and configuration version. Read-only, with a SQLite WAL reader: it works while the service
runs, takes no lock and never writes. With `--mqtt-url`, the gateway's retained status topic is added
(the live view: forwarder state, pollers' health, last reload).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.store_read import open_readonly
from gateway.store_schema import ABS_TS_OF_MESSAGE

QUALITY = {0: "good", 1: "uncertain", 2: "bad", 3: "bad"}
CALIBRATION = {0: "valid", 1: "due_soon", 2: "expired", 3: "unknown"}
LOOKBACK_MESSAGES = 200  # per instrument: how far back the newest good value of each point is looked for
LIVE_WAIT_S = 3.0  # how long to wait for the retained status message


def add_parser(sub: Any) -> None:
    s = sub.add_parser("status", help="per instrument: last good reading, quality, calibration, open gaps, backlog")
    s.add_argument("--config", type=Path, default=None,
                   help="configuration directory (default: config when --store is not given)")
    s.add_argument("--store", type=Path, help="the store file (default: store.path of the config)")
    s.add_argument("--mqtt-url", help="also read the gateway's live status topic from this broker")
    s.add_argument("--prefix", default=None, help="topic prefix for --mqtt-url without --config (default: carbon)")
    s.add_argument("--format", choices=["table", "json"], default="table")


def run(args: argparse.Namespace) -> int:
    cfg = None
    if args.config is not None or args.store is None:
        from gateway.cli import _load

        cfg = _load(args.config or Path("config"))
    path = Path(args.store) if args.store is not None else Path(cfg.settings.store.path)  # type: ignore[union-attr]
    db = open_readonly(path)
    try:
        report = collect(db, path, cfg, now_ms=int(time.time() * 1000))
    finally:
        db.close()
    if args.mqtt_url:
        from gateway.cli import _check_url_arg

        _check_url_arg(args.mqtt_url)
        prefix = args.prefix or (cfg.settings.mqtt.topic_prefix if cfg is not None else "carbon")
        gateway = cfg.settings.gateway.id if cfg is not None else "+"
        report["live"] = live_status(args.mqtt_url, prefix, gateway, cfg)
    if args.format == "json":
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(report))
    return 0


# -- reading the store --------------------------------------------------------------------------------

def collect(db: sqlite3.Connection, path: Path, cfg: Any, *, now_ms: int) -> dict[str, Any]:
    """Everything `status` shows from the store, as JSON."""
    series = {int(sid): (str(i), str(p), str(u)) for sid, i, p, u in
              db.execute("SELECT id, instrument, point, unit FROM series")}
    labels = {int(lid): str(t) for lid, t in db.execute("SELECT id, text FROM labels")}
    configured = {s.id: s for s in cfg.instruments} if cfg is not None else {}
    names = list(configured) or sorted({i for i, _p, _u in series.values()})
    backlog = {str(i): (int(n), int(t)) for i, n, t in db.execute(
        "SELECT m.instrument, COUNT(*), MIN(m.created_ms) FROM pending p JOIN messages m ON m.id = p.message_id "
        "GROUP BY m.instrument")}
    gaps = open_gaps(db)
    instruments: dict[str, Any] = {}
    for iid in names:
        spec = configured.get(iid)
        points = [p.name for p in spec.points] if spec is not None else \
            sorted({p for i, p, _u in series.values() if i == iid})
        newest, good = last_readings(db, iid, set(points), series, labels)
        n, oldest = backlog.get(iid, (0, None))
        body: dict[str, Any] = {
            "last_reading": newest,
            "last_good": good,
            "points": len(points),
            "points_without_good": sorted(set(points) - set(good)),
            "open_gaps": gaps.get(iid, []),
            "backlog": {"messages": n, "oldest_age_s": None if oldest is None else round((now_ms - oldest) / 1000, 1)},
        }
        if spec is not None:
            cal = spec.calibration
            body["calibration"] = {"now": cal.status_at(now_ms).value, "due_date": _due(spec)}
            body["status"] = spec.model.status.value
        instruments[iid] = body
    pending, oldest_pending = db.execute(
        "SELECT COUNT(*), MIN(m.created_ms) FROM pending p JOIN messages m ON m.id = p.message_id").fetchone()
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    cfg_row = None
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'config_history'").fetchone():
        cfg_row = db.execute("SELECT version, started_ms, cause FROM config_history "
                             "ORDER BY id DESC LIMIT 1").fetchone()
    size = sum(os.path.getsize(p) for p in (str(path), str(path) + "-wal") if os.path.exists(p))
    return {
        "store": {"path": str(path), "epoch": meta.get("epoch"), "schema_version": meta.get("schema_version"),
                  "size_bytes": size, "pending_messages": int(pending),
                  "oldest_pending_age_s": None if oldest_pending is None
                  else round((now_ms - int(oldest_pending)) / 1000, 1),
                  "config_version": cfg_row[0] if cfg_row else None,
                  "config_since_ms": cfg_row[1] if cfg_row else None,
                  "config_cause": cfg_row[2] if cfg_row else None},
        "configured_version": cfg.version if cfg is not None else None,
        "instruments": instruments,
    }


def _due(spec: Any) -> str | None:
    from gateway.calibration import due_date

    c = spec.model.calibration
    due = None if c is None else due_date(c.last_date, c.interval_months, c.due_date)
    return None if due is None else due.isoformat()


def last_readings(db: sqlite3.Connection, instrument: str, points: set[str], series: dict[int, tuple[str, str, str]],
                  labels: dict[int, str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The newest reading of an instrument, and the newest good value of each of its points (looked for in
    its last LOOKBACK_MESSAGES readings messages, newest first, through the per-message time index)."""
    newest: dict[str, Any] | None = None
    good: dict[str, Any] = {}
    for first, last, base in db.execute(
            "SELECT first_id, last_id, IFNULL(ts_base, 0) FROM messages WHERE kind = 'readings' AND instrument = ? "
            "ORDER BY max_ts DESC LIMIT ?", (instrument, LOOKBACK_MESSAGES)).fetchall():
        for sid, ts, value, code in db.execute(
                f"SELECT series, {ABS_TS_OF_MESSAGE}, value, code FROM samples WHERE id BETWEEN ?2 AND ?3 "
                "ORDER BY id DESC", (base, first, last)):
            _i, point, unit = series.get(sid, ("", "?", ""))
            if newest is None or ts > newest["ts"]:
                newest = {"ts": ts, "point": point, "quality": QUALITY[code & 3],
                          "reason": labels.get(code >> 4, ""), "calibration": CALIBRATION[(code >> 2) & 3]}
            if code & 3 == 0 and value is not None and (point not in good or ts > good[point]["ts"]):
                good[point] = {"ts": ts, "value": value, "unit": unit, "calibration": CALIBRATION[(code >> 2) & 3]}
        if points and points <= set(good):
            break
    return newest, good


def open_gaps(db: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
    """Per instrument, the gaps whose last event is a `gap_open` (point, since, cause)."""
    out: dict[str, list[dict[str, Any]]] = {}
    rows = db.execute(
        "SELECT r.instrument, r.point, r.body FROM records r JOIN (SELECT MAX(id) AS id FROM records "
        "WHERE kind = 'events' AND json_extract(body, '$.type') IN ('gap_open', 'gap_close') "
        "GROUP BY instrument, point) last ON r.id = last.id").fetchall()
    for instrument, point, text in rows:
        body = json.loads(text)
        if body.get("type") == "gap_open":
            out.setdefault(instrument, []).append({"point": point, "since": body.get("start_ms"),
                                                   "cause": body.get("cause")})
    return out


# -- the live status topic --------------------------------------------------------------------------

def live_status(url: str, prefix: str, gateway: str, cfg: Any) -> dict[str, Any]:
    """The retained status message of the gateway (or of every gateway under the prefix), or an error."""
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
    got: dict[str, Any] = {}
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            got[msg.topic] = json.loads(msg.payload)
        except ValueError:
            got[msg.topic] = {"error": "not JSON"}
        if gateway != "+":
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"carbon-status-{os.getpid()}")
    mq = cfg.settings.mqtt if cfg is not None else None
    if mq is not None and mq.username is not None:
        client.username_pw_set(mq.username, mq.password())
    if parsed.scheme == "mqtts":
        import ssl

        tls = mq.tls if mq is not None else None
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
        if tls and tls.cert_file:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        client.tls_set_context(ctx)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/{gateway}/status", qos=1)
    try:
        client.connect(host, port)
    except (OSError, ValueError) as err:
        return {"error": f"cannot connect to the mqtt broker {host}:{port}: {getattr(err, 'strerror', None) or err}"}
    client.loop_start()
    try:
        done.wait(LIVE_WAIT_S)
    finally:
        client.loop_stop()
        client.disconnect()
    if not got:
        return {"error": f"no retained status on {prefix}/{gateway}/status within {LIVE_WAIT_S:g} s"}
    return got[next(iter(got))] if gateway != "+" and len(got) == 1 else {"gateways": got}


# -- the table -----------------------------------------------------------------------------------------

def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(report: dict[str, Any]) -> str:
    st = report["store"]
    lines = [f"store {st['path']}: {st['size_bytes'] / 1e6:.1f} MB, {st['pending_messages']} messages not yet "
             f"delivered" + (f" (oldest {st['oldest_pending_age_s']:.0f} s)" if st["oldest_pending_age_s"] else "")
             + f", config {st['config_version'] or '-'}" + (f" ({st['config_cause']} {_time(st['config_since_ms'])})"
                                                            if st["config_since_ms"] else "")]
    if report.get("configured_version") and report["configured_version"] != st["config_version"]:
        lines.append(f"note: the configuration on disk is {report['configured_version']}, not yet running "
                     "(reload or restart the gateway)")
    rows: list[tuple[str, ...]] = [("instrument", "last reading (UTC)", "quality", "calibration", "due",
                                    "last good (UTC)", "good points", "open gaps", "backlog")]
    for iid, b in report["instruments"].items():
        last = b["last_reading"]
        quality = "-" if last is None else last["quality"] + (f"/{last['reason']}" if last["reason"] else "")
        cal = b.get("calibration", {})
        newest_good = max((g["ts"] for g in b["last_good"].values()), default=None)
        gaps = ", ".join(f"{g['point']} since {_time(g['since'])}" for g in b["open_gaps"][:2])
        if len(b["open_gaps"]) > 2:
            gaps += f" +{len(b['open_gaps']) - 2}"
        backlog = str(b["backlog"]["messages"]) + (f" ({b['backlog']['oldest_age_s']:.0f} s)"
                                                   if b["backlog"]["messages"] else "")
        rows.append((iid, _time(last["ts"]) if last else "-", quality,
                     cal.get("now") or (last["calibration"] if last else "-"), cal.get("due_date") or "-",
                     _time(newest_good), f"{len(b['last_good'])}/{b['points']}", gaps or "-", backlog))
    lines += _table(rows)
    live = report.get("live")
    if live is not None:
        if "error" in live:
            lines.append(f"live: {live['error']}")
        else:
            fw = live.get("forwarder", {})
            lines.append(f"live: {live.get('state')} since {_time(live.get('started'))}, config "
                         f"{live.get('config_version', '-')}, published {fw.get('published', '-')}, acked "
                         f"{fw.get('acked', '-')}" + (f", last error: {fw['last_error']}" if fw.get("last_error")
                                                     else ""))
            rl = live.get("reload")
            if rl:
                lines.append(f"last reload: {rl.get('result')} at {_time(rl.get('at'))}, config "
                             f"{rl.get('config_version')}" + (f": {rl['error']}" if rl.get("error") else ""))
    return "\n".join(lines) + "\n"
