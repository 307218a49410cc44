"""DL/T 645-2007 meter simulator: one or more meters on a serial line (a pseudo-terminal) or behind a
TCP "transparent gateway", answering with the same frame codec and DI table the driver decodes.

It answers "read data" (0x11) for every DI of its profile (normal answer 0x91, with the FE wake-up
preamble), "read address" (0x13) on the wildcard address AA..AA (each meter answers; with several
meters the answers collide into garbage, as on a real line), and the abnormal answer 0xD1 with
error word bit 1 "no requested data" for a DI it does not have. Fault knobs per meter (`MeterFaults`,
settable while serving): `timeout` (never answer), `bad_checksum`, `truncated`, `garbled`, `error`
(abnormal answer with this error word to every read) and `frozen` (values stop changing).

    python -m simulators.dlt645_server --pty /tmp/ttyV1 --meter 000012345678 [--meter ...]
    python -m simulators.dlt645_server --tcp 127.0.0.1:8899 --meter 000012345678 --fault 000012345678=error:0x02
    python -m simulators.dlt645_server --pty /tmp/ttyV1 --config CONFIG_DIR

serve the bundled `dlt645_three_phase` profile at the given addresses, or every serial DL/T 645
instrument of CONFIG_DIR with its own points and address (docs/dlt645.md). `carbon-gateway simulate`
serves the loopback `dlt645_over_tcp` instruments of a configuration through build_simulators().
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from drivers.dlt645.di import data_item, di_bytes, encode_value, parse_di
from drivers.dlt645.frame import (
    ABNORMAL,
    DIRECTION_ANSWER,
    READ_ADDRESS,
    READ_DATA,
    START,
    WAKE,
    WILDCARD,
    Frame,
    FrameError,
    encode_frame,
    extract,
    format_address,
    parse_address,
)
from gateway.shutdown import stop_on_signals
from simulators.signals import SignalState

PROFILE = Path(__file__).resolve().parent.parent / "drivers" / "dlt645" / "profiles" / "dlt645_three_phase.yaml"
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02

ValueSource = Callable[[float], dict[str, float]]


@dataclass
class MeterFaults:
    timeout: bool = False  # take the request, never answer
    bad_checksum: bool = False  # answer with CS off by one
    truncated: bool = False  # send only the first half of the answer
    garbled: bool = False  # send bytes that cannot start a frame
    error: int | None = None  # abnormal answer (0xD1) with this error word to every read
    frozen: bool = False  # values stop changing

    def clear(self) -> None:
        self.timeout = self.bad_checksum = self.truncated = self.garbled = self.frozen = False
        self.error = None


@dataclass(frozen=True)
class SimPoint:
    name: str
    di: int
    scale: float = 1.0
    offset: float = 0.0


@dataclass
class SimulatedMeter:
    address: bytes  # wire order
    points: Sequence[SimPoint]
    source: ValueSource
    faults: MeterFaults = field(default_factory=MeterFaults)
    values: dict[str, float] = field(default_factory=dict)
    requests: int = 0

    def __post_init__(self) -> None:
        self._by_di = {p.di: p for p in self.points}
        self.step(0.0)

    @property
    def nameplate(self) -> str:
        return format_address(self.address)

    def step(self, dt: float) -> None:
        if not self.faults.frozen or not self.values:
            self.values = dict(self.source(dt))

    def table_value(self, di: int) -> float:
        """The value the meter sends for `di` (before the driver's scale/offset)."""
        p = self._by_di[di]
        return (self.values.get(p.name, 0.0) - p.offset) / p.scale

    def answer(self, frame: Frame) -> bytes | None:
        """The bytes this meter sends back for a request addressed to it (None: stays silent)."""
        self.requests += 1
        f = self.faults
        if f.timeout:
            return None
        if frame.function == READ_ADDRESS:
            out = encode_frame(self.address, READ_ADDRESS | DIRECTION_ANSWER, self.address)
        elif frame.function == READ_DATA and len(frame.data) == 4:
            di = int.from_bytes(frame.data, "little")
            if f.error is not None:
                out = self._abnormal(f.error)
            elif di not in self._by_di:
                out = self._abnormal(ERR_NO_DATA)
            else:
                fmt = data_item(di).fmt
                try:
                    value = encode_value(fmt, self.table_value(di))
                except ValueError:  # out of the format's range: a real meter would clamp; say "other error"
                    return self._damage(self._abnormal(ERR_OTHER))
                out = encode_frame(self.address, READ_DATA | DIRECTION_ANSWER, di_bytes(di) + value)
        else:
            out = encode_frame(self.address, frame.function | DIRECTION_ANSWER | ABNORMAL, bytes([ERR_OTHER]))
        return self._damage(out)

    def _abnormal(self, err: int) -> bytes:
        return encode_frame(self.address, READ_DATA | DIRECTION_ANSWER | ABNORMAL, bytes([err & 0xFF]))

    def _damage(self, out: bytes) -> bytes:
        f = self.faults
        if f.bad_checksum:
            return out[:-2] + bytes([(out[-2] + 1) & 0xFF, out[-1]])
        if f.truncated:
            return out[: len(out) // 2]
        if f.garbled:
            return bytes([0x00, 0x5A]) + out[6:]  # no FE/68 where a frame must start
        return out


def meter_from_points(address: str, points: Iterable[Mapping[str, Any]], *, seed: int = 1,
                      start_s: float | None = None) -> SimulatedMeter:
    """A meter serving `points` (profile point dicts: name, di, optional scale/offset/simulate)."""
    pts = list(points)
    state = SignalState({"points": [{"name": p["name"], "simulate": p.get("simulate")} for p in pts]}, seed=seed,
                        start_s=time.time() % 86_400 if start_s is None else start_s)
    sims = [SimPoint(p["name"], parse_di(p["di"]), float(p.get("scale") or 1.0), float(p.get("offset") or 0.0))
            for p in pts]
    return SimulatedMeter(parse_address(address), sims, state.step)


def profile_points(path: Path = PROFILE) -> list[dict[str, Any]]:
    from gateway.yamlload import load_yaml, to_plain

    tree = to_plain(load_yaml(path))
    return list(tree["points"])


def meter_for_spec(spec: Any, *, seed: int = 1, start_s: float | None = None) -> SimulatedMeter:
    """The simulated meter of a configured DL/T 645 instrument (a gateway.instruments.InstrumentSpec):
    every point of its profile plus overrides (a real meter answers every DI it has, whatever the
    instrument reads), at its configured address."""
    from gateway.registry import device_points, load_profiles

    points = [{"name": p.name, "di": p.di, "scale": p.scale, "offset": p.offset, "simulate": p.simulate}
              for p in device_points(spec.model, load_profiles()[0]) if getattr(p, "di", None) is not None]
    return meter_from_points(spec.connection.address, points, seed=seed, start_s=start_s)


def build_simulators(specs: Sequence[Any], *, seed: int = 1) -> list[Dlt645TcpServer]:
    """`carbon-gateway simulate`: one TCP server per loopback `dlt645_over_tcp` endpoint with its
    meters (serial `dlt645` buses are served with `--pty`, see main())."""
    servers: dict[tuple[str, int], Dlt645TcpServer] = {}
    for i, spec in enumerate(specs):
        c = spec.connection
        if c.protocol != "dlt645_over_tcp" or not c.is_loopback:
            continue
        srv = servers.setdefault((c.host, c.port), Dlt645TcpServer(c.host, c.port, []))
        meter = meter_for_spec(spec, seed=seed + i)
        srv.meters.append(meter)
        srv.instruments[spec.id] = meter
    return list(servers.values())


class Dlt645Bus:
    """The meters on one line: bytes in, answers out (no I/O; the servers below move the bytes)."""

    def __init__(self, meters: Iterable[SimulatedMeter]) -> None:
        # The server's own list when given one, so meters may join or leave the line while serving.
        self.meters = meters if isinstance(meters, list) else list(meters)
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while self._buf:
            try:
                frame, used = extract(self._buf)
            except FrameError:
                # Resynchronise on the next byte that can start a frame, as a meter's receiver does.
                nxt = next((i for i in range(1, len(self._buf)) if self._buf[i] in (START, WAKE)), len(self._buf))
                del self._buf[:nxt]
                continue
            if frame is None:
                break
            del self._buf[:used]
            if frame.is_answer:
                continue  # another meter's answer (or our own, on a line that echoes)
            out.extend(self._dispatch(frame))
        return out

    def _dispatch(self, frame: Frame) -> list[bytes]:
        if frame.address == WILDCARD:
            answers = [a for m in self.meters if (a := m.answer(frame)) is not None]
            if len(answers) > 1:  # several meters talk at once: the line carries garbage
                n = max(len(a) for a in answers)
                mixed = bytearray(n)
                for a in answers:
                    for i, b in enumerate(a):
                        mixed[i] ^= b
                return [bytes(mixed)]
            return answers
        for m in self.meters:
            if m.address == frame.address:
                a = m.answer(frame)
                return [a] if a is not None else []
        return []  # no such meter on this line: silence


async def _tick(meters: Sequence[SimulatedMeter], interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(interval_s)
        now = loop.time()
        for m in meters:
            m.step(now - last)
        last = now


class _Server:
    def __init__(self, meters: Sequence[SimulatedMeter], update_interval_s: float) -> None:
        self.meters = list(meters)
        self.update_interval_s = update_interval_s
        self.echo = False  # knob: send every received byte back first, like a 2-wire adapter that hears itself
        self.instruments: dict[str, SimulatedMeter] = {}  # by instrument id, when built from a configuration
        self._ticker: asyncio.Task[None] | None = None

    def apply_fault(self, instrument_id: str, knob: str, arg: int | None) -> None:
        apply_fault(self.instruments[instrument_id], knob, arg)

    def by_address(self, nameplate: str) -> SimulatedMeter:
        return next(m for m in self.meters if m.nameplate == nameplate.rjust(12, "0"))

    def _start_ticker(self) -> None:
        self._ticker = asyncio.create_task(_tick(self.meters, self.update_interval_s), name="sim-dlt645-tick")

    async def _stop_ticker(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> _Server:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class Dlt645SerialServer(_Server):
    """The meters on a serial port (in tests, one end of a simulators.modbus_rtu_server.SocatPtyPair)."""

    def __init__(self, port: str, meters: Sequence[SimulatedMeter], *, baudrate: int = 2400, parity: str = "E",
                 stopbits: int = 1, bytesize: int = 8, update_interval_s: float = 0.2) -> None:
        super().__init__(meters, update_interval_s)
        self.port = port
        self.settings = {"baudrate": baudrate, "parity": parity, "stopbits": stopbits, "bytesize": bytesize}
        self._serial: Any = None
        self._bus = Dlt645Bus(())

    async def start(self) -> None:
        import serial

        try:
            self._serial = serial.serial_for_url(self.port, timeout=0, **self.settings)
        except (serial.SerialException, OSError) as err:
            raise RuntimeError(f"cannot open {self.port}: {err}") from err
        self._bus = Dlt645Bus(self.meters)
        asyncio.get_running_loop().add_reader(self._serial.fileno(), self._readable)
        self._start_ticker()

    def _readable(self) -> None:
        import serial

        ser = self._serial
        if ser is None:
            return
        try:
            data = ser.read(max(1, ser.in_waiting))
        except (serial.SerialException, OSError):  # the pty went away: stop serving
            asyncio.get_running_loop().remove_reader(ser.fileno())
            return
        if self.echo:
            ser.write(data)
        for answer in self._bus.feed(data):
            ser.write(answer)

    async def stop(self) -> None:
        await self._stop_ticker()
        ser, self._serial = self._serial, None
        if ser is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(ser.fileno())
            ser.close()


class Dlt645TcpServer(_Server):
    """The meters behind a transparent serial-to-TCP gateway (raw frames over each TCP connection)."""

    def __init__(self, host: str, port: int, meters: Sequence[SimulatedMeter], *,
                 update_interval_s: float = 0.2) -> None:
        super().__init__(meters, update_interval_s)
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def label(self) -> str:
        return f"dlt645_over_tcp://{self.host}:{self.port} (DL/T 645 meters behind a serial-to-TCP gateway)"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        self._start_ticker()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        bus = Dlt645Bus(self.meters)
        try:
            while data := await reader.read(512):
                if self.echo:
                    writer.write(data)
                for answer in bus.feed(data):
                    writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._clients.discard(task)

    async def stop(self) -> None:
        await self._stop_ticker()
        if self._server is not None:
            self._server.close()
            for t in list(self._clients):
                t.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None


KNOBS = ("timeout", "bad_checksum", "truncated", "garbled", "frozen", "error")


def apply_fault(meter: SimulatedMeter, knob: str, arg: int | None) -> None:
    if knob == "error":
        meter.faults.error = ERR_NO_DATA if arg is None else arg
    elif knob in KNOBS:
        setattr(meter.faults, knob, True)
    else:
        raise ValueError(f"unknown knob {knob!r}; expected one of {', '.join(KNOBS)}")


async def _serve(args: argparse.Namespace) -> int:
    if args.config is not None:
        from gateway.errors import ConfigErrors
        from gateway.registry import load_config

        try:
            cfg = load_config(args.config)
        except ConfigErrors as err:
            print(err, file=sys.stderr)
            return 2
        meters = [meter_for_spec(s, seed=args.seed + i) for i, s in enumerate(cfg.instruments)
                  if s.connection.protocol == ("dlt645" if args.pty else "dlt645_over_tcp") and s.polled]
    else:
        points = profile_points()
        meters = [meter_from_points(a, points, seed=args.seed + i) for i, a in enumerate(args.meter)]
    if not meters:
        print("no meter to simulate: give --meter, or --config with DL/T 645 instruments", file=sys.stderr)
        return 2
    by_plate = {m.nameplate: m for m in meters}
    for item in args.fault:
        plate, _, rest = item.partition("=")
        knob, _, arg = rest.partition(":")
        meter = by_plate.get(plate.rjust(12, "0"))
        try:
            if meter is None:
                raise ValueError(f"no simulated meter {plate}")
            apply_fault(meter, knob, int(arg, 0) if arg else None)
        except ValueError as err:
            print(f"--fault {item}: {err}", file=sys.stderr)
            return 2
    server: _Server
    if args.pty:
        server = Dlt645SerialServer(args.pty, meters, baudrate=args.baudrate, parity=args.parity)
        where = args.pty
    else:
        host, _, port = args.tcp.rpartition(":")
        server = Dlt645TcpServer(host or "127.0.0.1", int(port), meters)
        where = args.tcp
    try:
        await server.start()
    except (RuntimeError, OSError) as err:
        print(f"cannot serve on {where}: {err}", file=sys.stderr)
        return 2
    try:
        with stop_on_signals() as stop:
            for m in meters:
                print(f"simulating DL/T 645 meter {m.nameplate} on {where}", flush=True)
            await stop.wait()
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.dlt645_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", help="serial port to serve (the far end of the gateway's)")
    where.add_argument("--tcp", help="HOST:PORT to listen on, as a transparent serial-to-TCP gateway")
    ap.add_argument("--meter", action="append", default=[], help="meter address, up to 12 digits (repeatable)")
    ap.add_argument("--config", type=Path, help="serve the DL/T 645 instruments of this configuration directory "
                    "(with --pty: the serial `dlt645` ones; with --tcp: the `dlt645_over_tcp` ones)")
    ap.add_argument("--fault", action="append", default=[], metavar="ADDRESS=KNOB[:ARG]",
                    help=f"knobs: {', '.join(KNOBS)}")
    ap.add_argument("--baudrate", type=int, default=2400)
    ap.add_argument("--parity", default="E", choices=("N", "E", "O"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
