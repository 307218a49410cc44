"""OPC UA security against the simulator's Basic256Sha256 endpoints: trust list, pinning, login.

Certificates are generated per test by asyncua's own helpers (simulators.opcua_server.generate_certificate).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.spec import OpcUaDevice, OpcUaPoint, OpcUaSecurity, SecurityMode, SecurityPolicy
from gateway.errors import PermanentDriverError
from gateway.model import Quality, RawSample
from simulators.opcua_server import CemsOpcUaSimulator, free_port, generate_certificate, node_id

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

CLIENT_URI = "urn:carbon-gateway:client"
SAFETY_S = 15.0


@pytest.fixture
async def client_pair(tmp_path: Path) -> tuple[Path, Path]:
    return await generate_certificate(tmp_path / "client_key.pem", tmp_path / "client_cert.der", CLIENT_URI,
                                      server=False)


async def secure_sim(tmp_path: Path, users: dict[str, str] | None = None) -> CemsOpcUaSimulator:
    sim = CemsOpcUaSimulator(port=free_port(), update_interval_s=0.05, secure_dir=tmp_path / "server",
                             users=users)
    await sim.start()
    return sim


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[CemsOpcUaSimulator]:
    s = await secure_sim(tmp_path)
    try:
        yield s
    finally:
        await s.stop()


def trust_dir_with(tmp_path: Path, name: str, *certs: Path) -> Path:
    d = tmp_path / name
    d.mkdir()
    for c in certs:
        shutil.copy(c, d / c.name)
    return d


def device(sim: CemsOpcUaSimulator, client_pair: tuple[Path, Path], **security: Any) -> OpcUaDevice:
    cert, key = client_pair
    sec = OpcUaSecurity(**{"policy": SecurityPolicy.BASIC256SHA256, "mode": SecurityMode.SIGN_AND_ENCRYPT,
                           "client_cert": str(cert), "client_key": str(key), "application_uri": CLIENT_URI,
                           **security})
    return OpcUaDevice("CEMS-01", sim.endpoint, (OpcUaPoint("CO2", node_id("CO2")),
                                                 OpcUaPoint("O2", node_id("O2"))),
                       publishing_interval_ms=50, timeout_s=2.0, reconnect_initial_s=0.05, reconnect_max_s=0.2,
                       security=sec)


async def collect(driver: OpcUaDriver, until: int) -> list[RawSample]:
    """Run the driver until `until` samples arrived, then close it."""
    samples: list[RawSample] = []
    enough = asyncio.Event()

    async def sink(instrument: str, batch: Sequence[RawSample]) -> None:
        samples.extend(batch)
        if len(samples) >= until:
            enough.set()

    task = asyncio.create_task(driver.run(sink))
    try:
        async with asyncio.timeout(SAFETY_S):
            await enough.wait()
    finally:
        await driver.close()
    assert task.cancelled()
    return samples


async def test_sign_and_encrypt_connects_when_the_server_certificate_is_trusted(
    sim: CemsOpcUaSimulator, client_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    assert sim.server_cert_path is not None
    trusted = trust_dir_with(tmp_path, "trusted", sim.server_cert_path)
    dev = device(sim, client_pair, trust_dir=str(trusted))
    await OpcUaDriver(dev).probe()
    # Pinning single certificate files works too, and so does Sign without encryption.
    await OpcUaDriver(device(sim, client_pair, trusted_certs=(str(sim.server_cert_path),),
                             mode=SecurityMode.SIGN)).probe()
    # Explicitly opting out of the check connects without any trust list.
    await OpcUaDriver(device(sim, client_pair, trust_server_certificate_without_check=True)).probe()
    # And data flows over the encrypted session.
    samples = await collect(OpcUaDriver(dev), until=6)
    assert all(s.quality is Quality.GOOD and s.value is not None for s in samples)


async def test_untrusted_server_certificate_fails_with_a_typed_error(
    sim: CemsOpcUaSimulator, client_pair: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = trust_dir_with(tmp_path, "other", client_pair[0])  # some certificate, not the server's
    empty = trust_dir_with(tmp_path, "empty")
    for trust in (other, empty):
        with pytest.raises(PermanentDriverError, match=r"server certificate rejected \(BadCertificateUntrusted\)"):
            await OpcUaDriver(device(sim, client_pair, trust_dir=str(trust))).probe()

    # run() never gives up (an operator may trust the certificate later) but records the gap and the cause.
    caplog.set_level(logging.ERROR, logger="drivers.opcua.driver")
    driver = OpcUaDriver(device(sim, client_pair, trust_dir=str(other)))
    samples = await collect(driver, until=10)
    assert all(s.quality is Quality.BAD and s.reason == "no_communication" for s in samples)
    assert isinstance(driver.last_error, PermanentDriverError)
    assert "BadCertificateUntrusted" in str(driver.last_error)
    errors = [r for r in caplog.records if r.name == "drivers.opcua.driver" and r.levelname == "ERROR"]
    assert len(errors) == 1  # logged once on the state change, not per attempt

    # Dropping the certificate into the trust directory is picked up at the next attempt, no restart.
    assert sim.server_cert_path is not None
    shutil.copy(sim.server_cert_path, other / "server_cert.der")
    driver = OpcUaDriver(device(sim, client_pair, trust_dir=str(other)))
    samples = await collect(driver, until=4)
    assert all(s.quality is Quality.GOOD for s in samples)


async def test_username_and_password(client_pair: tuple[Path, Path], tmp_path: Path) -> None:
    sim = await secure_sim(tmp_path, users={"gateway": "s3cret"})
    try:
        assert sim.server_cert_path is not None
        base = device(sim, client_pair, trusted_certs=(str(sim.server_cert_path),))
        ok = replace(base, security=replace(base.security, username="gateway", password="s3cret"))
        await OpcUaDriver(ok).probe()
        wrong = replace(base, security=replace(base.security, username="gateway", password="guess"))
        with pytest.raises(PermanentDriverError, match="refused"):
            await OpcUaDriver(wrong).probe()
        with pytest.raises(PermanentDriverError, match="refused"):
            await OpcUaDriver(base).probe()  # anonymous is not offered
    finally:
        await sim.stop()
