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


def _run_briefly(cfg_dir: Path, seconds: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--log-level", "WARNING", "run", "--config", str(cfg_dir),
                           "--duration", str(seconds)], capture_output=True, text=True, timeout=60, env=env)


def test_tls_with_ca_verification_and_mqtt5(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    from tests.helpers import make_tls_files

    ca, cert, key = make_tls_files(tmp_path / "pki")
    sim = subprocess.Popen([sys.executable, "-m", "gateway", "simulate", "--config",
                            str(write_config(tmp_path / "sim", three_meters(ports)))],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert sim.stdout is not None
        while not sim.stdout.readline().startswith(b"simulators ready"):
            pass
        with PrivateBroker(tls=(ca, cert, key)) as broker:
            cfg = write_config(tmp_path / "cfg", three_meters(ports), url=broker.url, store=tmp_path / "gw.db")
            text = (cfg / "gateway.yaml").read_text().replace(
                "topic_prefix: carbon,", f'topic_prefix: carbon, protocol: "5", tls: {{ca_file: "{ca}"}},')
            (cfg / "gateway.yaml").write_text(text)
            done = _run_briefly(cfg, 4.0)
            assert done.returncode == 0, done.stderr
            assert "refused" not in done.stderr, done.stderr
            assert "ERROR" not in done.stderr, done.stderr
            # Delivered over TLS: nothing is left pending in the store.
            import sqlite3

            with sqlite3.connect(tmp_path / "gw.db") as db:
                sent = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
                last_commit = db.execute("SELECT MAX(created_ms) FROM messages").fetchone()[0]
                pending = db.execute("SELECT m.created_ms FROM pending p JOIN messages m ON m.id = p.message_id"
                                     ).fetchall()
            assert sent > 10
            # Only what the final flush at shutdown committed can still wait (for the next start).
            assert all(created == last_commit for (created,) in pending), (pending, last_commit)
            # A CA that did not sign the broker's certificate: the handshake must fail, nothing delivered.
            other_ca = make_tls_files(tmp_path / "other")[0]
            (cfg / "gateway.yaml").write_text(text.replace(str(ca), str(other_ca)))
            done = _run_briefly(cfg, 3.0)
            assert done.returncode == 3, done.stderr  # like a rejected login: one line, exit 3
            lines = [x for x in done.stderr.splitlines() if x.startswith("error:")]
            assert len(lines) == 1, done.stderr
            assert "TLS certificate not trusted" in lines[0]
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)
