"""An asyncua server that behaves like a CEMS gas analyzer, with fault knobs for tests and demos.

Address space (namespace "urn:carbon-gateway:sim:cems", index 2 on this server; stable string ids):

    Objects/CEMS                      ns=2;s=CEMS
      CO2                  Double     ns=2;s=CEMS.CO2                    %vol, 10..14
      O2                   Double     ns=2;s=CEMS.O2                     %vol, 5..8
      FlueGasFlow          Double     ns=2;s=CEMS.FlueGasFlow            Nm3/h
      Temperature          Double     ns=2;s=CEMS.Temperature            degC
      Pressure             Double     ns=2;s=CEMS.Pressure               kPa
      Moisture             Double     ns=2;s=CEMS.Moisture               %vol
      DeviceHealth         Int32      ns=2;s=CEMS.DeviceHealth           DI DeviceHealthEnumeration 0..4
      CalibrationInProgress Boolean   ns=2;s=CEMS.CalibrationInProgress

Every `update_interval_s` each measurement is written with an explicit Double Variant, the current
StatusCode and a fresh SourceTimestamp. Knobs (all take effect immediately):
`set_bad_status(code, variable=None)`, `clear_bad_status()`, `set_calibration(on)`, `set_frozen(on)`,
`set_health(0..4)`, `drop_subscriptions()` (server-side delete: the client's publish loop stops without a
word, the peers' classic "silently dead subscription"), and `stop()`/`start()` on the same port for a
restart. Knob state survives a restart, like an analyzer that keeps its mode while its OPC UA server
reboots.

Run standalone:  python -m simulators.opcua_server --port 4840 [--host 127.0.0.1] [--secure DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.shutdown import stop_on_signals

NAMESPACE_URI = "urn:carbon-gateway:sim:cems"
SERVER_APPLICATION_URI = "urn:carbon-gateway:sim:cems:server"
OBJECT_NAME = "CEMS"

# name -> (start value, low, high, step sigma, unit). Random walk clipped to [low, high].
MEASUREMENTS: dict[str, tuple[float, float, float, float, str]] = {
    "CO2": (12.0, 10.0, 14.0, 0.15, "%vol"),
    "O2": (6.5, 5.0, 8.0, 0.08, "%vol"),
    "FlueGasFlow": (250_000.0, 200_000.0, 300_000.0, 1_500.0, "Nm3/h"),
    "Temperature": (140.0, 120.0, 160.0, 0.5, "degC"),
    "Pressure": (101.3, 99.0, 104.0, 0.05, "kPa"),
    "Moisture": (10.0, 7.0, 13.0, 0.1, "%vol"),
}
HEALTH = "DeviceHealth"
CALIBRATION = "CalibrationInProgress"
VARIABLES: tuple[str, ...] = (*MEASUREMENTS, HEALTH, CALIBRATION)

# What the analyzer reads while span gas is applied during a calibration (values stay visible).
SPAN_GAS: dict[str, float] = {"CO2": 15.0, "O2": 0.0}

DEVICE_HEALTH_NORMAL = 0
DEVICE_HEALTH_CHECK_FUNCTION = 2


def node_id(name: str, namespace_index: int = 2) -> str:
    """Node id string of a variable ("CEMS.<name>") or of the CEMS object itself (name "")."""
    return f"ns={namespace_index};s={OBJECT_NAME}.{name}" if name else f"ns={namespace_index};s={OBJECT_NAME}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (asyncua endpoints cannot bind port 0 and report it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def generate_certificate(
    key_path: Path, cert_path: Path, application_uri: str, *, server: bool
) -> tuple[Path, Path]:
    """Self-signed application certificate via asyncua's helper: (cert DER, key PEM)."""
    uses = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    await setup_self_signed_certificate(key_path, cert_path, application_uri, socket.gethostname(), uses, {})
    return cert_path, key_path


@dataclass(slots=True)
class CemsKnobs:
    """Fault state. Read it freely; change it through the simulator's methods so writes happen at once."""

    bad_status: dict[str, int] = field(default_factory=dict)  # variable -> StatusCode
    calibration: bool = False
    frozen: bool = False
    health: int = DEVICE_HEALTH_NORMAL


class _PasswordUsers(UserManager):
    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class CemsOpcUaSimulator:
    """The CEMS analyzer server. `async with CemsOpcUaSimulator(port=p) as sim:` or start()/stop().

    `secure_dir`: when given, a server key/certificate pair is generated there (server_key.pem,
    server_cert.der) and only Basic256Sha256 Sign / SignAndEncrypt endpoints are offered.
    `users`: when given, anonymous login is refused and only these username/password pairs are accepted.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4840,
        *,
        update_interval_s: float = 0.1,
        seed: int | None = None,
        secure_dir: Path | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.update_interval_s = update_interval_s
        self.knobs = CemsKnobs()
        self.secure_dir = secure_dir
        self._users = users
        self._rng = random.Random(seed)
        self._values: dict[str, float] = {name: spec[0] for name, spec in MEASUREMENTS.items()}
        self._server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._task: asyncio.Task[None] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/"

    @property
    def server_cert_path(self) -> Path | None:
        return self.secure_dir / "server_cert.der" if self.secure_dir else None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def values(self) -> dict[str, float]:
        """The latest measurement values (what the server holds unless a Bad status nulls them)."""
        return dict(self._values)

    async def __aenter__(self) -> CemsOpcUaSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Build a fresh server (new sessions, new subscription ids: a real reboot) on the same port."""
        if self._server is not None:
            return
        server = Server(user_manager=_PasswordUsers(self._users) if self._users is not None else None)
        await server.init()
        # asyncua's clock task sleeps 1 s between updates and stop() waits for it; nothing here needs
        # Server.CurrentTime, so skip it and keep restarts fast.
        server.disable_clock(True)
        server.set_endpoint(self.endpoint)
        server.set_server_name("carbon-gateway CEMS simulator")
        await server.set_application_uri(SERVER_APPLICATION_URI)
        if self.secure_dir is not None:
            self.secure_dir.mkdir(parents=True, exist_ok=True)
            cert, key = await generate_certificate(
                self.secure_dir / "server_key.pem", self.secure_dir / "server_cert.der",
                SERVER_APPLICATION_URI, server=True,
            )
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            server.set_security_policy([
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
            ])
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self._users is not None:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        idx = await server.register_namespace(NAMESPACE_URI)
        cems = await server.nodes.objects.add_object(ua.NodeId(OBJECT_NAME, idx), OBJECT_NAME)
        self._nodes = {}
        for name in MEASUREMENTS:
            var = await cems.add_variable(
                ua.NodeId(f"{OBJECT_NAME}.{name}", idx), name, self._values[name], ua.VariantType.Double
            )
            self._nodes[name] = var.nodeid
        health = await cems.add_variable(
            ua.NodeId(f"{OBJECT_NAME}.{HEALTH}", idx), HEALTH, self.knobs.health, ua.VariantType.Int32
        )
        calibration = await cems.add_variable(
            ua.NodeId(f"{OBJECT_NAME}.{CALIBRATION}", idx), CALIBRATION, self.knobs.calibration,
            ua.VariantType.Boolean,
        )
        self._nodes[HEALTH] = health.nodeid
        self._nodes[CALIBRATION] = calibration.nodeid
        await server.start()
        self._server = server
        self.starts += 1
        await self._write_status_variables()
        await self._write_measurements()
        self._task = asyncio.create_task(self._update_loop(), name=f"cems-sim:{self.port}")

    async def stop(self) -> None:
        """Stop listening and drop every session; the port is free again when this returns."""
        server, self._server = self._server, None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            # asyncua keeps a session with live subscriptions after its transport closes (Part 4 §6.7)
            # and Server.stop() does not end them; drop the subscriptions first so every session
            # closes with its connection, as it would when a real server process dies.
            service = server.iserver.subscription_service
            await service.delete_subscriptions(list(service.subscriptions))
            await server.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    # --- knobs -----------------------------------------------------------------------------------

    async def set_bad_status(self, code: int = ua.StatusCodes.BadSensorFailure, variable: str | None = None) -> None:
        """Serve `code` (any StatusCode, Bad or Uncertain) on one measurement, or on all of them."""
        for name in self._targets(variable):
            self.knobs.bad_status[name] = code
        await self._write_measurements()

    async def clear_bad_status(self, variable: str | None = None) -> None:
        for name in self._targets(variable):
            self.knobs.bad_status.pop(name, None)
        await self._write_measurements()

    async def set_calibration(self, on: bool) -> None:
        """Calibration in progress: the flag, DeviceHealth=CHECK_FUNCTION, span gas on CO2/O2."""
        self.knobs.calibration = on
        self.knobs.health = DEVICE_HEALTH_CHECK_FUNCTION if on else DEVICE_HEALTH_NORMAL
        # Flags first: a client never sees span-gas values before the flag that explains them.
        await self._write_status_variables()
        await self._write_measurements()

    async def set_frozen(self, on: bool) -> None:
        """A stuck analyzer: the same values keep coming with fresh timestamps and Good status."""
        self.knobs.frozen = on

    async def set_health(self, value: int) -> None:
        self.knobs.health = int(value)
        await self._write_status_variables()

    async def drop_subscriptions(self) -> int:
        """Delete every subscription server-side without telling the client. Returns how many."""
        if self._server is None:
            return 0
        service = self._server.iserver.subscription_service
        ids = list(service.subscriptions)
        await service.delete_subscriptions(ids)
        return len(ids)

    # --- internals -------------------------------------------------------------------------------

    def _targets(self, variable: str | None) -> tuple[str, ...]:
        if variable is None:
            return tuple(MEASUREMENTS)
        if variable not in MEASUREMENTS:
            raise ValueError(f"unknown measurement {variable!r}; one of {', '.join(MEASUREMENTS)}")
        return (variable,)

    def _step(self) -> None:
        for name, (_start, low, high, sigma, _unit) in MEASUREMENTS.items():
            if self.knobs.calibration and name in SPAN_GAS:
                self._values[name] = SPAN_GAS[name] + self._rng.gauss(0.0, sigma / 10)
                continue
            value = self._values[name]
            if not low <= value <= high:
                value = MEASUREMENTS[name][0]  # back from span gas: resume around the start value
            self._values[name] = min(high, max(low, value + self._rng.gauss(0.0, sigma)))

    async def _write(self, name: str, variant: ua.Variant, status: int, now: datetime) -> None:
        assert self._server is not None
        await self._server.write_attribute_value(
            self._nodes[name],
            ua.DataValue(Value=variant, StatusCode=ua.StatusCode(status), SourceTimestamp=now, ServerTimestamp=now),
        )

    async def _write_measurements(self) -> None:
        if self._server is None:
            return
        now = datetime.now(UTC)
        for name in MEASUREMENTS:
            # A Bad status makes asyncua serve a null value (Part 4 7.7.1); Uncertain keeps it.
            status = self.knobs.bad_status.get(name, ua.StatusCodes.Good)
            await self._write(name, ua.Variant(self._values[name], ua.VariantType.Double), status, now)

    async def _write_status_variables(self) -> None:
        if self._server is None:
            return
        now = datetime.now(UTC)
        await self._write(CALIBRATION, ua.Variant(self.knobs.calibration, ua.VariantType.Boolean), 0, now)
        await self._write(HEALTH, ua.Variant(self.knobs.health, ua.VariantType.Int32), 0, now)

    async def _update_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.update_interval_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if not self.knobs.frozen:
                self._step()
            await self._write_measurements()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CEMS gas analyzer OPC UA simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--update-interval", type=float, default=1.0, help="seconds between value updates")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--secure", type=Path, default=None, metavar="DIR",
                        help="generate a server certificate in DIR and offer Basic256Sha256 endpoints only")
    parser.add_argument("--calibration", action="store_true", help="start in calibration mode")
    parser.add_argument("--health", type=int, default=DEVICE_HEALTH_NORMAL, choices=range(5))
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    sim = CemsOpcUaSimulator(
        args.host, args.port, update_interval_s=args.update_interval, seed=args.seed, secure_dir=args.secure
    )
    with stop_on_signals() as stop:
        async with sim:
            if args.calibration:
                await sim.set_calibration(True)
            if args.health != DEVICE_HEALTH_NORMAL:
                await sim.set_health(args.health)
            # One parseable line so scripts and tests know when to connect.
            print(f"READY {sim.endpoint}", flush=True)
            await stop.wait()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
