"""The store fills up and space returns; a corrupted store at start.

Full: the store lives on a small tmpfs (root, as in CI) or, for an unprivileged run, behind an
RLIMIT_FSIZE on the gateway process. The writer's commit fails: one line, status `store_failed`, exit
4 with every committed reading intact. Space returns: the next start delivers everything.
Corrupt: garbage in the middle of a store: refused at start with one line (exit 4), the file untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.cli import EXIT_STORE
from simulators.broker import PrivateBroker
from tests.helpers import Recorder, dedup_by_seq, three_meters, write_config
from tests.system.conftest import (
    assert_delivered_equals_committed,
    assert_integrity_ok,
    committed,
    gateway_cmd,
    start_gateway,
    stop_gateway,
    wait_exit,
    wait_until,
)

DISK_BYTES = 3 * 1024 * 1024
FREE_BYTES = 640 * 1024  # schema 9 (hash chain, config history) starts larger than schema 6 did


@contextlib.contextmanager
def small_disk(directory: Path, how: str) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A directory on a tiny filesystem (root), or a file-size limit for the gateway process (anyone)."""
    directory.mkdir()
    mounted = False
    if how == "tmpfs" and os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(directory)],
                                 capture_output=True).returncode == 0
    try:
        if mounted:
            yield directory, None
        else:
            def limit() -> None:  # sqlite sees EFBIG like ENOSPC; Python ignores SIGXFSZ
                resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_BYTES - FREE_BYTES, resource.RLIM_INFINITY))
            yield directory, limit
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.mark.parametrize("how", ["tmpfs", "rlimit_fsize"])
async def test_store_fills_up_then_space_returns(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker,
                                                 recorder: Recorder, meters, gateway_log: Path, how: str) -> None:
    from gateway.registry import load_config

    with small_disk(tmp_path / "disk", how) as (disk, limit):
        db = disk / "gw.db"
        filler = disk / "filler"
        cfg_dir = write_config(tmp_path / "cfg", three_meters(ports, interval=0.05), url=broker.url, store=db,
                               per_message=1)
        await meters(load_config(cfg_dir))
        if limit is None:
            filler.write_bytes(b"\0" * (DISK_BYTES - FREE_BYTES))
        gw = start_gateway(cfg_dir, gateway_log, preexec_fn=limit)
        try:
            assert await wait_exit(gw, 60) == EXIT_STORE
        finally:
            if gw.poll() is None:
                gw.kill()
        text = gateway_log.read_text()
        assert text.strip().splitlines()[-1].startswith("error: ")  # the one-line reason, last
        # ENOSPC on the tmpfs; EFBIG past RLIMIT_FSIZE, which SQLite reports as an I/O error.
        assert ("disk is full" if limit is None else "disk I/O error") in text.strip().splitlines()[-1]
        assert "writer: " in text
        assert "stopping the gateway" in text
        assert "Traceback" not in text
        full = committed(db)
        assert len(full) > 50
        assert any(b["state"] == "store_failed" for b in recorder.by_topic_suffix("/status"))
        assert_integrity_ok(db)
        # Space returns: the same store goes on, and everything committed before the failure is delivered.
        filler.unlink(missing_ok=True)
        seen = len(recorder.by_topic_suffix("/status"))
        gw = start_gateway(cfg_dir, gateway_log)
        try:
            assert await wait_until(lambda: any(b["state"] == "online" for b in
                                                recorder.by_topic_suffix("/status")[seen:]), 20)
            assert await wait_until(lambda: set(full) <= set(dedup_by_seq(recorder.readings())), 30)
        finally:
            assert stop_gateway(gw) == 0
        after = committed(db)
        assert all(after[k] == v for k, v in full.items())  # committed before the failure: intact
        assert_delivered_equals_committed(db, recorder.readings)
        assert_integrity_ok(db)
    assert "Traceback" not in gateway_log.read_text()


def test_corrupted_store_is_refused_at_start(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker,
                                             recorder: Recorder, gateway_log: Path) -> None:
    from gateway.model import Calibration, Quality, Reading
    from gateway.store import Store

    db = tmp_path / "gw.db"
    store = Store(db)
    for i in range(40):
        store.commit([Reading("PM-01", "voltage_l1", 1_700_000_000_000 + i * 1000 + j, 230.0 + j, "V", Quality.GOOD,
                              "", Calibration.VALID) for j in range(500)], now_ms=1_700_000_000_000, per_message=50)
    store.close()
    size = db.stat().st_size
    assert size > 256 * 1024
    with open(db, "r+b") as f:  # 64 KB of garbage in the middle
        f.seek(size // 2 // 4096 * 4096)
        f.write(os.urandom(64 * 1024))
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=db)
    done = subprocess.run(gateway_cmd("run", "--config", str(cfg_dir)), capture_output=True, text=True, timeout=60)
    gateway_log.write_text(done.stderr)
    assert done.returncode == EXIT_STORE, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert "corrupt" in errors[0]
    assert "store recover" in errors[0]  # says how to recover
    assert "Traceback" not in done.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest  # the evidence is left as it was
    assert recorder.readings() == []  # nothing published from a store that cannot be trusted
