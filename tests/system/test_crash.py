"""kill -9 at random moments, at least ten times, while polling and while draining a backlog.

The gateway first runs without a reachable broker, so a backlog builds up; then it is killed ten times
at random moments of its restart, drain and live forwarding (one message per reading, so the drain takes
a while). Nothing committed may be lost, seq has no holes, the store passes integrity_check.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

from simulators.broker import PrivateBroker, free_port
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, three_meters, write_config
from tests.system.conftest import (
    assert_delivered_equals_committed,
    assert_integrity_ok,
    committed,
    start_gateway,
    stop_gateway,
    wait_until,
)

KILLS = 10


async def test_kill9_ten_times_while_polling_and_draining(tmp_path: Path, ports: tuple[int, int, int],
                                                          broker: PrivateBroker, recorder: Recorder, meters,
                                                          gateway_log: Path) -> None:
    from gateway.registry import load_config

    db = tmp_path / "gw.db"
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports, interval=0.1), url=broker.url, store=db,
                           per_message=1)
    await meters(load_config(cfg_dir))
    rng = random.Random(int.from_bytes(os.urandom(4)))  # random moments; the seed is in the log on failure
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    # A backlog: polling and committing with the broker unreachable, then the first kill -9.
    gw = start_gateway(cfg_dir, gateway_log, "--mqtt-url", f"mqtt://127.0.0.1:{free_port()}")
    assert await wait_until(lambda: db.exists() and len(committed(db)) > 300, 30), gateway_log.read_text()[-2000:]
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait(10)
    backlog = len(committed(db))
    for _ in range(KILLS - 1):
        gw = start_gateway(cfg_dir, gateway_log)
        before = len(recorder.readings())
        # Wait until this run is forwarding (draining the backlog or live), then crash at a random moment.
        assert await wait_until(lambda n=before: len(recorder.readings()) > n, 20), gateway_log.read_text()[-2000:]
        await asyncio.sleep(rng.uniform(0.05, 1.0))
        os.kill(gw.pid, signal.SIGKILL)
        gw.wait(10)
    assert await wait_until(lambda: any(b["state"] == "offline" and b.get("reason") == "connection_lost"
                                        for b in recorder.by_topic_suffix("/status")), 10)
    seen = len(recorder.by_topic_suffix("/status"))
    gw = start_gateway(cfg_dir, gateway_log)
    try:
        # The last run is up (its own online status, every supervised component running) ...
        assert await wait_until(lambda: any(b["state"] == "online" and "components" in b
                                            and all(c["state"] == "running" for c in b["components"].values())
                                            for b in recorder.by_topic_suffix("/status")[seen:]), 20)
        # ... and delivers everything committed by all the runs before it.
        snapshot = committed(db)
        assert len(snapshot) > backlog
        assert await wait_until(lambda: set(snapshot) <= set(dedup_by_seq(recorder.readings())), 40), \
            f"seed {seed}: {sorted(set(snapshot) - set(dedup_by_seq(recorder.readings())))[:10]}"
    finally:
        assert stop_gateway(gw) == 0
    assert_delivered_equals_committed(db, recorder.readings)
    dedup = dedup_by_seq(recorder.readings())
    for inst in ("PM-01", "FT-01", "CEMS-01"):
        assert seqs_without_holes(dedup, inst), (seed, inst)
    assert_integrity_ok(db)
    text = gateway_log.read_text()
    assert text.count("carbon-gateway 0.") == KILLS + 1  # the start line of every run
    assert "Traceback" not in text
