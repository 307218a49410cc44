"""Broker faults with messages in flight: a restart without persistence, and a broker that stops
answering (SIGSTOP: the TCP connection stays up, no PUBACK, no CONNACK) and then recovers (SIGCONT)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from urllib.parse import urlparse

from simulators.broker import PrivateBroker
from tests.helpers import GATEWAY_YAML, Recorder, dedup_by_seq, three_meters, write_config
from tests.system.conftest import (
    acked_but_unseen,
    assert_delivered_equals_committed,
    assert_integrity_ok,
    committed,
    start_gateway,
    stop_gateway,
    wait_until,
)


def config(tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, **mqtt: float) -> Path:
    db = tmp_path / "gw.db"
    text = GATEWAY_YAML.format(url=broker.url, store=db, per_message=1)
    extra = "".join(f", {k}: {v}" for k, v in mqtt.items())
    text = text.replace("readings_per_message: 1}", f"readings_per_message: 1{extra}}}")
    return write_config(tmp_path / "cfg", three_meters(ports, interval=0.1), gateway_yaml=text)


def delivered(*recorders: Recorder) -> list[dict]:
    return [b for r in recorders for b in r.readings()]


async def test_broker_restarted_without_persistence_while_messages_in_flight(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder, meters,
        gateway_log: Path) -> None:
    from gateway.registry import load_config

    cfg_dir = config(tmp_path, ports, broker, reconnect_min_s=1, reconnect_max_s=2)
    db = tmp_path / "gw.db"
    await meters(load_config(cfg_dir))
    gw = start_gateway(cfg_dir, gateway_log)
    recorders = [recorder]
    try:
        assert await wait_until(lambda: len(recorder.readings()) > 50, 20), gateway_log.read_text()[-2000:]
        broker.stop()  # messages in flight die with it: no persistence, nothing queued survives
        assert await wait_until(lambda: "connection lost" in gateway_log.read_text(), 10)
        await asyncio.sleep(1.0)  # the gateway keeps polling and committing meanwhile
        during = len(committed(db))
        # The restarted broker forgot every subscription: what it accepts before a subscriber is back goes
        # nowhere, and the gateway cannot know (MQTT semantics, not a gateway loss). Hold the gateway still
        # (SIGSTOP) until a fresh subscriber has its SUBACK, so the test checks only what the gateway owns:
        # re-sending every message the dead broker never PUBACKed.
        os.kill(gw.pid, signal.SIGSTOP)
        try:
            broker.start()
            u = urlparse(broker.url)
            recorders.append(Recorder(u.hostname or "127.0.0.1", u.port or 1883).start())
        finally:
            os.kill(gw.pid, signal.SIGCONT)
        assert await wait_until(lambda: len(committed(db)) > during + 50, 20)
        snapshot = committed(db)
        assert await wait_until(lambda: set(snapshot) <= set(dedup_by_seq(delivered(*recorders))), 30), \
            sorted(set(snapshot) - set(dedup_by_seq(delivered(*recorders))))[:10]
        # Status: truthful again after the outage.
        assert await wait_until(lambda: any(b["state"] == "online" for b in recorders[-1].by_topic_suffix("/status")),
                                15)
    finally:
        assert stop_gateway(gw) == 0
        # What the broker acknowledged last may still be on its way to the subscriber.
        await wait_until(lambda: not acked_but_unseen(db, delivered(*recorders)), 10)
        for r in recorders[1:]:
            r.stop()
    assert_delivered_equals_committed(db, lambda: delivered(*recorders))
    assert_integrity_ok(db)
    text = gateway_log.read_text()
    assert text.count("connection lost") == 1
    assert "Traceback" not in text


async def test_broker_that_never_pubacks_then_recovers(
        tmp_path: Path, ports: tuple[int, int, int], broker: PrivateBroker, recorder: Recorder, meters,
        gateway_log: Path) -> None:
    from gateway.registry import load_config

    cfg_dir = config(tmp_path, ports, broker, puback_timeout_s=1, connack_timeout_s=1, keepalive_s=60)
    db = tmp_path / "gw.db"
    await meters(load_config(cfg_dir))
    gw = start_gateway(cfg_dir, gateway_log)
    assert broker._proc is not None
    pid = broker._proc.pid
    try:
        assert await wait_until(lambda: len(recorder.readings()) > 50, 20), gateway_log.read_text()[-2000:]
        os.kill(pid, signal.SIGSTOP)  # the connection stays open; nothing is acknowledged any more
        try:
            assert await wait_until(lambda: "no PUBACK" in gateway_log.read_text(), 15), gateway_log.read_text()[-2000:]
            stalled = len(committed(db))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await wait_until(lambda: len(committed(db)) > stalled + 50, 20)
        snapshot = committed(db)
        assert await wait_until(lambda: set(snapshot) <= set(dedup_by_seq(recorder.readings())), 30), \
            sorted(set(snapshot) - set(dedup_by_seq(recorder.readings())))[:10]
        statuses = recorder.by_topic_suffix("/status")
        assert await wait_until(lambda: statuses[-1]["state"] == "online" and statuses[-1]["forwarder"], 15)
    finally:
        assert stop_gateway(gw) == 0
    assert_delivered_equals_committed(db, recorder.readings)
    assert_integrity_ok(db)
    text = gateway_log.read_text()
    assert text.count("no PUBACK") == 1  # one line when it starts ...
    assert text.count("now online") == 1  # ... and one when it ends
    assert "Traceback" not in text
