"""Shared test helpers: config directories on disk and an MQTT subscriber that records everything."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.app import group_by_endpoint, make_connection
from gateway.clock import SystemClock
from gateway.model import Reading
from gateway.poller import ConnectionPoller, DeviceHealth
from gateway.queue import ReadingQueue
from gateway.registry import Config

GATEWAY_YAML = """\
gateway: {{id: gw-test, site: test site, timezone: UTC}}
mqtt: {{url: "{url}", topic_prefix: carbon, status_interval_s: 1, readings_per_message: {per_message}}}
store: {{path: "{store}", commit_interval_ms: 20}}
limits: {{backoff_min_s: 0.1, backoff_max_s: 0.5, default_poll_interval_s: 0.2}}
"""


def write_config(directory: Path, instruments_yaml: str, *, url: str = "mqtt://127.0.0.1:1883",
                 store: Path | None = None, per_message: int = 100, gateway_yaml: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "instruments").mkdir(exist_ok=True)
    store = store or directory / "gw.db"
    text = gateway_yaml if gateway_yaml is not None else GATEWAY_YAML.format(url=url, store=store,
                                                                             per_message=per_message)
    (directory / "gateway.yaml").write_text(text)
    (directory / "instruments" / "plant.yaml").write_text(textwrap.dedent(instruments_yaml))
    return directory


def three_meters(ports: tuple[int, int, int], *, interval: float = 0.2) -> str:
    """The three sample instruments (power, flow, CEMS) on the given loopback ports."""
    return f"""\
instruments:
  - id: PM-01
    name: power meter
    kind: power_meter
    calibration: {{last_date: 2026-01-10, interval_months: 24, certificate: C-1}}
    profile: eastron_sdm630
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {ports[0]}, unit_id: 1, timeout_s: 0.5}}
    poll_interval_s: {interval}
    only_points: [voltage_l1, total_active_power, total_import_active_energy]
  - id: FT-01
    name: gas flow meter
    kind: flow_meter
    profile: siemens_mag6000
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {ports[1]}, unit_id: 2, timeout_s: 0.5}}
    poll_interval_s: {interval}
    only_points: [volume_flow, totalizer_1]
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    calibration: {{last_date: 2026-10-30, due_date: 2026-12-05}}
    profile: cems_generic
    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {ports[2]}, unit_id: 1, timeout_s: 0.5}}
    poll_interval_s: {interval}
"""


@dataclass
class Recorder:
    """A real MQTT subscriber (paho) recording every message by topic."""

    url_host: str
    url_port: int
    topic: str = "carbon/#"
    client_id: str | None = None  # with a fixed id the session is persistent: the broker queues while we are away
    messages: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id or f"rec-{time.monotonic_ns()}",
                                  clean_session=self.client_id is None)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def start(self) -> Recorder:
        self.client.connect(self.url_host, self.url_port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber did not get SUBACK"
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def readings(self) -> list[dict[str, Any]]:
        with self._lock:
            return [body for topic, body, _ in self.messages if topic.endswith("/readings")]

    def by_topic_suffix(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for topic, body, _ in self.messages if topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()


def dedup_by_seq(readings: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for body in readings:
        out.setdefault((body["instrument"], body["seq"]), body)
    return out


def seqs_without_holes(dedup: dict[tuple[str, int], Any], instrument: str) -> bool:
    seqs = sorted(s for (i, s) in dedup if i == instrument)
    return bool(seqs) and seqs == list(range(1, seqs[-1] + 1))


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (PEM): (ca.pem, server.pem, server.key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carbon-gateway test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return paths


class PollingHarness:
    """The real pollers of every connection group, writing into a real ReadingQueue."""

    def __init__(self, cfg: Config, *, seed: int = 3) -> None:
        clock = SystemClock()
        lim = cfg.settings.limits
        self.queue = ReadingQueue(1_000_000)
        self.groups = group_by_endpoint(cfg.instruments)
        self.pollers = [ConnectionPoller(make_connection(specs[0], clock), specs, self.queue, clock,
                                         backoff_min_s=lim.backoff_min_s, backoff_max_s=lim.backoff_max_s, seed=seed)
                        for specs in self.groups.values()]
        self.readings: list[Reading] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> PollingHarness:
        self._tasks = [asyncio.create_task(p.run(), name=f"poll {p.conn.name}") for p in self.pollers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def health(self, iid: str) -> DeviceHealth:
        return next(p.health[iid] for p in self.pollers if iid in p.health)

    def of(self, iid: str) -> list[Reading]:
        self.readings.extend(self.queue.take(len(self.queue)))
        return [r for r in self.readings if r.instrument == iid]

    def polls(self, iid: str) -> list[list[Reading]]:
        """Readings grouped per poll: a poll yields each point once, so a repeated point starts the next."""
        out: list[list[Reading]] = []
        for r in self.of(iid):
            if not out or any(x.point == r.point for x in out[-1]):
                out.append([])
            out[-1].append(r)
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 8.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout_s} s")
            await asyncio.sleep(0.02)
