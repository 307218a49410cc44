"""Broker-facing behaviour: a rejected login, and an outage with a restart of the broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from simulators.broker import PrivateBroker, free_port
from tests.helpers import Recorder, dedup_by_seq, seqs_without_holes, three_meters, write_config


def test_rejected_login_is_one_line_and_exit_3(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    with PrivateBroker(users={"gateway": "right-secret"}) as broker:
        cfg = write_config(tmp_path, three_meters(ports), url=broker.url, store=tmp_path / "gw.db")
        text = (cfg / "gateway.yaml").read_text().replace(
            "topic_prefix: carbon,", "topic_prefix: carbon, username: gateway, password_env: GW_TEST_PW,")
        (cfg / "gateway.yaml").write_text(text)
        env = {"GW_TEST_PW": "wrong-secret", "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, "-m", "gateway", "--log-level", "ERROR", "run", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 3
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert f"mqtt broker 127.0.0.1:{broker.port} refused the connection" in lines[0]
    assert "wrong-secret" not in proc.stderr  # secrets are never logged
    assert "Traceback" not in proc.stderr


def test_broker_outage_backlog_drains_without_holes(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    port = free_port()
    persist = tmp_path / "broker"
    persist.mkdir()
    cfg = write_config(tmp_path / "cfg", three_meters(ports), url=f"mqtt://127.0.0.1:{port}",
                       store=tmp_path / "gw.db", per_message=5)
    text = (cfg / "gateway.yaml").read_text().replace("status_interval_s: 1,", "status_interval_s: 1, "
                                                       "reconnect_min_s: 0.2, reconnect_max_s: 1,")
    (cfg / "gateway.yaml").write_text(text)
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "--config", str(cfg)],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    broker = PrivateBroker(port=port, persistence_dir=persist).start()
    # A persistent session for the subscriber, so the broker queues what arrives while it is away too.
    rec = Recorder("127.0.0.1", port, client_id="central-subscriber").start()
    log = tmp_path / "gw.log"
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                          stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115
    try:
        assert rec.wait_for(lambda: len(rec.readings()) >= 3, 20), log.read_text()[-2000:]
        rec.stop()
        broker.stop()  # outage: the gateway keeps polling and storing
        time.sleep(3.0)
        broker = PrivateBroker(port=port, persistence_dir=persist).start()
        rec2 = Recorder("127.0.0.1", port, client_id="central-subscriber").start()
        # After the outage the backlog drains to the same (persistent-session) subscriber.
        assert rec2.wait_for(lambda: len(dedup_by_seq(rec2.readings())) >= 30, 30), log.read_text()[-2000:]
        rec2.stop()
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(15)
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
        broker.close()
    seen = dedup_by_seq(rec.readings() + rec2.readings())
    for inst in ("PM-01", "FT-01", "CEMS-01"):
        # The first subscriber's and the second's data together leave no seq hole across the outage.
        assert seqs_without_holes(seen, inst), (inst, sorted(s for (i, s) in seen if i == inst))
    assert "connection lost" in log.read_text()
