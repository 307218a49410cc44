"""System fault tests (issue 7.5): the shared harness.

Peers are real: a private Mosquitto (tests/conftest.py), the pymodbus meter simulators, the gateway as a
subprocess (so kill -9 is a real crash) or in-process where a clock must be injected. Every gateway log
of the run goes into one session directory (`system_logs`), which the last test of the package greps:
the only tracebacks allowed are the supervisor's deliberate reports.

Each fault test ends with `assert_delivered_equals_committed` and `assert_integrity_ok`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.helpers import dedup_by_seq

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schema"
_STATUS = Draft202012Validator(json.loads((SCHEMAS / "status.schema.json").read_text()))
_READINGS = Draft202012Validator(json.loads((SCHEMAS / "readings.schema.json").read_text()))

# A traceback is deliberate only right after the supervisor's report of a failed task.
SUPERVISOR_REPORT = re.compile(r"gateway\.supervisor: task .+ failed: ")


def assert_status_schema(body: dict[str, Any]) -> None:
    _STATUS.validate(body)


async def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


@pytest.fixture(scope="session")
def system_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every gateway log of the system-test run."""
    return tmp_path_factory.mktemp("system-logs")


@pytest.fixture
def gateway_log(system_logs: Path, request: pytest.FixtureRequest) -> Path:
    return system_logs / f"{request.node.name}.log"


@pytest.fixture
def in_process_log(gateway_log: Path) -> Iterator[Path]:
    """Route the in-process gateway's log records into the test's log file (same format as the CLI)."""
    handler = logging.FileHandler(gateway_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield gateway_log
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()


def stray_tracebacks(text: str) -> list[str]:
    """Tracebacks in a gateway log that do not follow a supervisor's report (with their preceding line)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            before = lines[i - 1] if i else ""
            if not SUPERVISOR_REPORT.search(before):
                out.append(f"{before!r} -> {' | '.join(lines[i:i + 8])}")
    return out


def gateway_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def start_gateway(config_dir: Path, log: Path, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(gateway_cmd("run", "--config", str(config_dir), *args), stdout=subprocess.DEVNULL,
                                stderr=err, **popen)


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """Wait for a gateway subprocess without blocking the loop (simulators may run in it)."""
    await wait_until(lambda: proc.poll() is not None, timeout_s)
    return proc.poll()


def stop_gateway(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    if proc.poll() is None:
        proc.terminate()
    return proc.wait(timeout_s)


def committed(db: Path) -> dict[tuple[str, int], list[tuple[Any, ...]]]:
    """(instrument, seq) -> the rows of every committed readings message."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        msgs = conn.execute("SELECT instrument, seq, first_id, last_id FROM messages WHERE kind='readings'").fetchall()
        return {(inst, seq): conn.execute(
            "SELECT point, ts_ms, value, unit, quality, reason, calibration FROM readings "
            "WHERE id BETWEEN ? AND ? ORDER BY id", (first, last)).fetchall() for inst, seq, first, last in msgs}


def as_rows(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["point"], r["ts"], r["value"], r["unit"], r["quality"], r["reason"], r["calibration"])
            for r in body["readings"]]


def still_pending(db: Path) -> set[tuple[str, int]]:
    """(instrument, seq) of readings messages not yet PUBACKed: kept in the outbox for the next start."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return set(conn.execute("SELECT m.instrument, m.seq FROM messages m JOIN pending p ON p.message_id = m.id "
                                "WHERE m.kind='readings'").fetchall())


def acked_but_unseen(db: Path, readings: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """Readings messages the broker PUBACKed that no recorder has (yet) read: the broker forwards a message
    to subscribers as it acknowledges it, so a recorder may still have it in its socket when the gateway
    stops. Wait for this to be empty before stopping the recorders, or the test loses what the product did not."""
    return set(committed(db)) - still_pending(db) - set(dedup_by_seq(readings))


def assert_delivered_equals_committed(db: Path, source: Callable[[], list[dict[str, Any]]]) -> int:
    """The subscriber's readings, deduplicated by (instrument, seq), are exactly what the store committed,
    same content under the same seq; a committed message not (yet) delivered must still be pending in the
    outbox (the tail committed by a clean stop, sent on the next start). `source` reads the live recorders:
    what the broker acknowledged last is given up to 10 s to reach them. Returns the number of messages."""
    deadline = time.monotonic() + 10
    while acked_but_unseen(db, source()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the recorders run on their own threads
    readings = source()
    store = committed(db)
    got = dedup_by_seq(readings)
    missing = set(store) - set(got)
    lost = sorted(missing - still_pending(db))
    extra = sorted(set(got) - set(store))
    assert not lost, f"{len(lost)} committed messages neither delivered nor pending, e.g. {lost[:5]}"
    assert not extra, f"{len(extra)} delivered messages the store does not have, e.g. {extra[:5]}"
    for key, rows in store.items():
        if key in got:
            assert as_rows(got[key]) == rows, key
    for body in readings[:200]:
        _READINGS.validate(body)
    return len(store)


def assert_integrity_ok(db: Path) -> None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def gap_events(db: Path, instrument: str | None = None) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT instrument, body FROM records WHERE kind='events'").fetchall()
    return [json.loads(b) for i, b in rows if instrument is None or i == instrument]


@pytest.fixture
async def meters(request: pytest.FixtureRequest) -> Any:
    """Start the simulators of a configuration in this test's loop: `servers = await meters(cfg)`.
    Returns {instrument id: (server, simulated device)}; stopped at the end of the test."""
    from simulators.runner import build_servers

    started: list[Any] = []

    async def start(cfg: Any) -> dict[str, Any]:
        servers = build_servers(cfg)
        for server, _ in servers.values():
            await server.start()
            started.append(server)
        return {iid: (server, dev) for server, devs in servers.values() for iid, dev in devs.items()}

    yield start
    for server in started:
        await server.stop()
