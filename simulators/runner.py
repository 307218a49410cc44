"""`carbon-gateway simulate`: serve every loopback instrument of a configuration with fault knobs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drivers.modbus.plugin import to_modbus_point
from gateway.errors import ConfigError, ConfigErrors, GatewayError
from gateway.instruments import InstrumentSpec
from gateway.protocols import PROTOCOLS
from gateway.registry import Config, device_points, load_profiles
from gateway.registry_schema import ProfileModel
from gateway.shutdown import stop_on_signals
from simulators.modbus_server import Faults, ModbusMeterServer, SimulatedDevice
from simulators.signals import SignalState

log = logging.getLogger("simulators")

KNOBS = ("refuse", "timeout", "exception", "frozen", "nan", "status", "truncated", "garbled",  # Modbus
         "calibration", "health", "bad_status")  # OPC UA (frozen too)
UA_KNOBS = ("frozen", "calibration", "health", "bad_status")


@dataclass(frozen=True)
class FaultSpec:
    instrument: str
    knob: str
    arg: int | None = None


def _simulator_modules() -> list[Any]:
    """Protocol simulators that plug in by convention: `simulators/<plugin name>_server.py` defining
    `build_simulators(specs, seed=) -> [server]` (each with `start()`, `stop()`, `host`, `port`,
    `label`, `instruments` {id: device} and `apply_fault(id, knob, arg)`) and its `KNOBS`."""
    modules = []
    for plugin in PROTOCOLS.plugins:
        try:
            module = importlib.import_module(f"simulators.{plugin.name}_server")
        except ModuleNotFoundError:
            continue
        if hasattr(module, "build_simulators"):
            modules.append((plugin.name, module))
    return modules


def parse_faults(items: Sequence[str]) -> list[FaultSpec]:
    out: list[FaultSpec] = []
    errors: list[ConfigError] = []
    knobs = tuple(dict.fromkeys([*KNOBS, *(k for _, m in _simulator_modules() for k in getattr(m, "KNOBS", ()))]))
    for item in items:
        inst, _, rest = item.partition("=")
        knob, _, arg = rest.partition(":")
        if not inst or knob not in knobs:
            errors.append(ConfigError(f"'{item}': expected ID=KNOB[:ARG] with KNOB one of {', '.join(knobs)}",
                                      file="--fault"))
            continue
        try:
            value = int(arg, 0) if arg else None
        except ValueError:
            errors.append(ConfigError(f"'{item}': argument must be an integer", file="--fault"))
            continue
        if knob in ("exception", "status", "health", "bad_status") and value is None:
            errors.append(ConfigError(f"'{item}': {knob} needs an argument, e.g. {knob}:0x02", file="--fault"))
            continue
        out.append(FaultSpec(inst, knob, value))
    if errors:
        raise ConfigErrors(errors)
    return out


@functools.cache
def _profiles() -> dict[str, ProfileModel]:
    return load_profiles()[0]


def simulated_device(spec: InstrumentSpec, *, seed: int) -> SimulatedDevice:
    points = device_points(spec.model, _profiles())
    profile = {"points": [{"name": p.name, "simulate": p.simulate} for p in points]}
    # Start `daily` shapes at the current time of day so a power profile looks like the real day.
    state = SignalState(profile, seed=seed, start_s=time.time() % 86_400)
    status_point = spec.health[0].point if spec.health else None
    gaps = spec.profile in ("eastron_sdm630",)  # meters documented to answer across reserved registers
    return SimulatedDevice(unit_id=spec.connection.unit_id, points=[to_modbus_point(p) for p in points],
                           source=state.step, status_point=status_point, allow_gaps=gaps)


def build_servers(cfg: Config, *, seed: int = 1,
                  time_scale: float = 1.0) -> dict[str, tuple[ModbusMeterServer, dict[str, SimulatedDevice]]]:
    """One Modbus server per loopback endpoint; returns {endpoint: (server, {instrument id: device})}."""
    servers: dict[str, tuple[ModbusMeterServer, dict[str, SimulatedDevice]]] = {}
    for i, spec in enumerate(cfg.instruments):
        conn = spec.connection
        if spec.protocol != "modbus" or not conn.is_loopback:
            continue
        if conn.endpoint not in servers:
            # A serial device server in front of RTU meters speaks RTU frames over TCP.
            server = ModbusMeterServer(conn.host, conn.port, {}, rtu_framing=conn.protocol == "modbus_rtu_over_tcp",
                                       time_scale=time_scale)
            servers[conn.endpoint] = (server, {})
        server, by_id = servers[conn.endpoint]
        dev = simulated_device(spec, seed=seed + i)
        server.devices[conn.unit_id] = dev
        by_id[spec.id] = dev
    return servers


def apply_fault(dev: SimulatedDevice, fault: FaultSpec) -> None:
    f: Faults = dev.faults
    if fault.knob == "timeout":
        f.timeout = True
    elif fault.knob == "exception":
        f.exception = fault.arg
    elif fault.knob == "frozen":
        f.frozen = True
    elif fault.knob == "nan":
        f.nan = True
    elif fault.knob == "status":
        f.status_bits = fault.arg or 0
    elif fault.knob in ("truncated", "garbled"):
        setattr(f, fault.knob, True)  # RTU framing only (rtu_over_tcp endpoints)
    else:
        raise ConfigErrors([ConfigError(f"knob '{fault.knob}' is for OPC UA instruments", file="--fault")])


async def apply_ua_fault(sim: Any, fault: FaultSpec) -> None:
    if fault.knob not in UA_KNOBS:
        raise ConfigErrors([ConfigError(f"knob '{fault.knob}' does not apply to the OPC UA simulator "
                                        f"(use {', '.join(UA_KNOBS)})", file="--fault")])
    if fault.knob == "frozen":
        await sim.set_frozen(True)
    elif fault.knob == "calibration":
        await sim.set_calibration(True)
    elif fault.knob == "health":
        await sim.set_health(fault.arg or 0)  # DI DeviceHealthEnumeration 0..4
    else:
        await sim.set_bad_status(fault.arg)  # a Bad StatusCode, e.g. 0x808C0000 BadSensorFailure


def busy_ports(endpoints: Sequence[tuple[str, int]]) -> list[str]:
    """`host:port (reason)` for each endpoint a listener cannot bind now (checked before any server
    starts, so a port in use is one line naming it, not a traceback from deep inside a server)."""
    busy: list[str] = []
    for host, port in dict.fromkeys(endpoints):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
                sock.bind((host, port))
        except OSError as err:
            busy.append(f"{host}:{port} ({err.strerror or err})")
    return busy


def plugin_simulators(cfg: Config, *, seed: int = 1) -> list[Any]:
    """The servers of the protocols that plug their simulator in by convention (_simulator_modules)."""
    out: list[Any] = []
    for name, module in _simulator_modules():
        specs = [s for s in cfg.instruments if s.protocol == name and s.polled and s.connection.is_loopback]
        if specs:
            out.extend(module.build_simulators(specs, seed=seed))
    return out


async def run_simulators(cfg: Config, *, faults: Sequence[FaultSpec] = (), duration_s: float | None = None,
                         seed: int = 1, time_scale: float = 1.0) -> int:
    servers = build_servers(cfg, seed=seed, time_scale=time_scale)
    ua = [s for s in cfg.instruments if s.protocol == "opcua" and s.connection.is_loopback]
    others = plugin_simulators(cfg, seed=seed)
    if not servers and not ua and not others:
        print("no instrument of this configuration has a loopback address: nothing to simulate")
        return 2
    by_id = {iid: (srv, dev) for srv, devs in servers.values() for iid, dev in devs.items()}
    ua_ids = {s.id for s in ua}
    other_ids = {iid: srv for srv in others for iid in srv.instruments}
    unknown = [f.instrument for f in faults
               if f.instrument not in by_id and f.instrument not in ua_ids and f.instrument not in other_ids]
    if unknown:
        raise ConfigErrors([ConfigError(f"no simulated instrument '{u}'", file="--fault") for u in unknown])
    endpoints = [(srv.host, srv.port) for srv, _ in servers.values()]
    endpoints += [(s.connection.host, s.connection.port) for s in ua]
    endpoints += [(srv.host, srv.port) for srv in others]
    busy = busy_ports(endpoints)
    if busy:
        raise GatewayError(f"cannot listen on {', '.join(busy)}: stop what uses the port or change it "
                           "in the configuration")
    started = []
    for endpoint, (srv, _) in servers.items():
        try:
            await srv.start()
        except (OSError, RuntimeError) as err:  # taken between the check and the start
            for other in started:
                await other.stop()
            raise GatewayError(f"cannot listen on {endpoint}: {err}") from None
        started.append(srv)
    for srv in others:
        try:
            await srv.start()
        except (OSError, RuntimeError) as err:
            for other in started:
                await other.stop()
            raise GatewayError(f"cannot listen on {srv.label}: {err}") from None
        started.append(srv)
    for f in faults:
        if f.instrument in ua_ids:
            continue
        if f.instrument in other_ids:
            try:
                other_ids[f.instrument].apply_fault(f.instrument, f.knob, f.arg)
            except ValueError as err:
                raise ConfigErrors([ConfigError(f"{f.instrument}: {err}", file="--fault")]) from None
            continue
        srv, dev = by_id[f.instrument]
        if f.knob == "refuse":
            await srv.set_refuse(True)
        else:
            apply_fault(dev, f)
    ua_sims = []
    if ua:
        from simulators.opcua_server import CemsOpcUaSimulator

        logging.getLogger("asyncua").setLevel(logging.WARNING)
        for i, spec in enumerate(ua):
            sim = CemsOpcUaSimulator(spec.connection.host, spec.connection.port, seed=seed + 100 + i)
            await sim.start()
            ua_sims.append(sim)
            for f in faults:
                if f.instrument == spec.id:
                    await apply_ua_fault(sim, f)
    for endpoint, (_srv, devs) in servers.items():
        print(f"simulating {', '.join(devs)} on {endpoint}", flush=True)
    for spec, sim in zip(ua, ua_sims, strict=True):
        print(f"simulating {spec.id} on {sim.endpoint} (OPC UA CEMS analyzer)", flush=True)
    for srv in others:
        print(f"simulating {', '.join(srv.instruments)} on {srv.label}", flush=True)
    print("simulators ready", flush=True)
    try:
        with stop_on_signals() as stop, contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration_s):
                await stop.wait()
    finally:  # also when cancelled: never leave a listener or its tasks behind
        for srv, _ in servers.values():
            await srv.stop()
        for sim in ua_sims:
            await sim.stop()
        for srv in others:
            await srv.stop()
    return 0
