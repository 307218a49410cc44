"""A flapping meter beside healthy ones: its outages are its own (bad readings, communication_loss gaps,
one log line per outage start and end); the healthy meters' data and status are untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulators.broker import PrivateBroker
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, three_meters, write_config
from tests.system.conftest import (
    assert_delivered_equals_committed,
    assert_integrity_ok,
    committed,
    gap_events,
    start_gateway,
    stop_gateway,
    wait_until,
)

FLAPS = 4


async def test_flapping_meter_beside_healthy_ones(tmp_path: Path, ports: tuple[int, int, int],
                                                  broker: PrivateBroker, recorder: Recorder, meters,
                                                  gateway_log: Path) -> None:
    from gateway.registry import load_config

    db = tmp_path / "gw.db"
    cfg_dir = write_config(tmp_path / "cfg", three_meters(ports, interval=0.2), url=broker.url, store=db,
                           per_message=5)
    sims = await meters(load_config(cfg_dir))
    flapping, _dev = sims["FT-01"]
    gw = start_gateway(cfg_dir, gateway_log)
    try:
        assert await wait_until(lambda: {b["instrument"] for b in recorder.readings()} >= {"PM-01", "FT-01",
                                                                                           "CEMS-01"}, 20)
        for _ in range(FLAPS):
            await flapping.set_refuse(True)
            await asyncio.sleep(1.2)  # several polls and backoffs: a gap opens
            await flapping.set_refuse(False)
            await asyncio.sleep(1.2)  # it answers again: the gap closes
        snapshot = committed(db)
        assert await wait_until(lambda: set(snapshot) <= set(dedup_by_seq(recorder.readings())), 20)
        assert await wait_until(lambda: recorder.by_topic_suffix("/status")[-1]["instruments"]["FT-01"]["state"]
                                == "ok", 10)
    finally:
        assert stop_gateway(gw) == 0
    status = recorder.by_topic_suffix("/status")[-2]  # the last periodic one, before the offline
    assert status["instruments"]["FT-01"]["failures"] >= FLAPS
    for healthy in ("PM-01", "CEMS-01"):
        assert status["instruments"][healthy]["failures"] == 0
        assert not [e for e in gap_events(db, healthy) if e.get("cause") == "communication_loss"]
    ft_gaps = [e for e in gap_events(db, "FT-01") if e.get("cause") == "communication_loss"]
    assert sum(e["kind"] == "open" for e in ft_gaps) >= FLAPS - 1
    assert sum(e["kind"] == "close" for e in ft_gaps) >= FLAPS - 1
    assert_delivered_equals_committed(db, recorder.readings)
    dedup = dedup_by_seq(recorder.readings())
    bad = {r["reason"] for (i, _s), b in dedup.items() if i == "FT-01" for r in b["readings"] if r["quality"] == "bad"}
    assert bad & {"no_communication", "timeout"}
    for inst in ("PM-01", "FT-01", "CEMS-01"):
        assert seqs_without_holes(dedup, inst), inst
    assert_integrity_ok(db)
    text = gateway_log.read_text()
    # One line when each outage starts and one when it ends; nothing about the healthy meters.
    assert text.count("FT-01: communication restored") == FLAPS
    assert "PM-01:" not in text
    assert "CEMS-01:" not in text
    assert "Traceback" not in text
