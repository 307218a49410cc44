"""Modbus RTU meter simulator on a serial line: several unit ids on one port, like an RS-485 bus.

pymodbus 3.16 removed the serial server's `allow_multiple_devices`; its request handler now hands
every well-formed frame to the datastore context, whatever the unit id. Our `_Context` answers for
the unit ids it holds and raises NoSuchIdException for the others, and `ignore_missing_devices`
turns that into silence, which is what a real multi-drop bus looks like to the master. The same
register images, fault knobs (`Faults`) and `fault_trace` hook as the TCP simulator are used, so
`truncated` and `garbled` frames come out of the real pymodbus RTU framer, altered on the way out.

`SocatPtyPair` makes a virtual null-modem cable (two linked pseudo-terminals) for tests and demos:
the simulator serves one end and the gateway opens the other as its serial port.

    python -m simulators.modbus_rtu_server CONFIG_DIR --serve /tmp/ttyV1 [--fault ID=KNOB[:ARG] ...]

serves every `modbus_rtu` instrument of CONFIG_DIR on /tmp/ttyV1 (see docs/modbus-rtu.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer

from gateway.shutdown import stop_on_signals
from simulators.modbus_server import SimulatedDevice, _Context, fault_trace, tick_devices


class _TrackingContext(_Context):
    """_Context that remembers requests held open by the `timeout` knob, so stop() can end them
    (pymodbus runs each request in its own task and never cancels it on shutdown)."""

    def __init__(self, devices: dict[int, SimulatedDevice]) -> None:
        super().__init__(devices)
        self.held: set[asyncio.Task[object]] = set()

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1
                              ) -> list[int] | list[bool] | ExcCodes:
        dev = self._sim_devices.get(device_id)
        task = asyncio.current_task()
        if dev is None or not dev.faults.timeout or task is None:
            return await super().async_getValues(device_id, func_code, address, count)
        self.held.add(task)
        try:
            return await super().async_getValues(device_id, func_code, address, count)
        finally:
            self.held.discard(task)


class ModbusRtuMeterServer:
    """One serial port with one or more simulated unit ids behind it."""

    def __init__(self, port: str, devices: dict[int, SimulatedDevice], *, baudrate: int = 9600, parity: str = "N",
                 stopbits: int = 1, bytesize: int = 8, update_interval_s: float = 0.2) -> None:
        self.port = port
        self.devices = devices  # live: unit ids and fault knobs may change while serving
        self.baudrate, self.parity, self.stopbits, self.bytesize = baudrate, parity, stopbits, bytesize
        self.update_interval_s = update_interval_s
        self._server: ModbusSerialServer | None = None
        self._context: _TrackingContext | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        for dev in self.devices.values():
            dev.step(0.0)
        self._context = _TrackingContext(self.devices)
        server = ModbusSerialServer(self._context, framer=FramerType.RTU, port=self.port, baudrate=self.baudrate,
                                    parity=self.parity, stopbits=self.stopbits, bytesize=self.bytesize,
                                    ignore_missing_devices=True, trace_packet=fault_trace(self.devices))
        await server.serve_forever(background=True)  # raises RuntimeError if the port cannot be opened
        self._server = server
        self._ticker = asyncio.create_task(self._tick(), name=f"sim-rtu-tick-{self.port}")

    async def _tick(self) -> None:
        await tick_devices(self.devices, self.update_interval_s)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._server is not None:
            await self._server.shutdown()  # closes the port
            self._server = None
        if self._context is not None:
            held = list(self._context.held)
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            self._context = None

    async def __aenter__(self) -> ModbusRtuMeterServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


class SocatPtyPair:
    """Two pseudo-terminals joined by socat (raw, no echo), reachable at two symlinks.

    Stopping it makes both ends vanish, as an unplugged USB adapter does; starting a new pair at
    the same paths is the adapter coming back (as /dev/serial/by-id links do)."""

    def __init__(self, a: Path | str, b: Path | str, *, socat: str | None = None) -> None:
        self.a, self.b = Path(a), Path(b)
        self.socat = socat or shutil.which("socat") or "/usr/bin/socat"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 5.0) -> SocatPtyPair:
        for link in (self.a, self.b):
            link.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [self.socat, f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while not (self.a.exists() and self.b.exists()):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"socat exited with {self._proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"socat did not create {self.a} and {self.b} within {timeout_s} s")
            time.sleep(0.01)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        for link in (self.a, self.b):  # socat removes its links on a clean exit; make sure
            if link.is_symlink():
                link.unlink(missing_ok=True)

    def __enter__(self) -> SocatPtyPair:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


_BOOL_KNOBS = ("timeout", "frozen", "nan", "truncated", "garbled")
_INT_KNOBS = ("exception", "status")


def _apply(dev: SimulatedDevice, knob: str, arg: int | None) -> None:
    if knob in _BOOL_KNOBS:
        setattr(dev.faults, knob, True)
    elif knob == "exception":
        dev.faults.exception = arg
    elif knob == "status":
        dev.faults.status_bits = arg or 0


async def _serve(config_dir: Path, serve_port: str, faults: Sequence[str], seed: int) -> int:
    from gateway.registry import load_config
    from simulators.runner import simulated_device

    cfg = load_config(config_dir)
    specs = [s for s in cfg.instruments if s.connection.protocol == "modbus_rtu" and s.polled]
    if not specs:
        print(f"no modbus_rtu instrument in {config_dir}: nothing to simulate", file=sys.stderr)
        return 2
    ports = {s.connection.port for s in specs}
    if len(ports) > 1:
        print(f"instruments use several buses ({', '.join(sorted(ports))}); serving all of them on {serve_port}",
              file=sys.stderr)
    by_id = {s.id: simulated_device(s, seed=seed + i) for i, s in enumerate(specs)}
    for item in faults:
        inst, _, rest = item.partition("=")
        knob, _, arg = rest.partition(":")
        try:
            value = int(arg, 0) if arg else None
        except ValueError:
            value = None
        if inst not in by_id or knob not in _BOOL_KNOBS + _INT_KNOBS or (knob in _INT_KNOBS) != (value is not None):
            print(f"--fault {item}: expected ID=KNOB[:ARG], ID one of {', '.join(by_id)}, KNOB one of "
                  f"{', '.join(_BOOL_KNOBS)} or {', '.join(k + ':N' for k in _INT_KNOBS)}", file=sys.stderr)
            return 2
        _apply(by_id[inst], knob, value)
    c = specs[0].connection
    server = ModbusRtuMeterServer(serve_port, {d.unit_id: d for d in by_id.values()}, baudrate=c.baudrate,
                                  parity=c.parity, stopbits=c.stopbits, bytesize=c.bytesize)
    with stop_on_signals() as stop:
        try:
            await server.start()
        except RuntimeError as err:  # pymodbus: the port cannot be opened
            print(f"cannot serve on {serve_port}: {err}", file=sys.stderr)
            return 2
        try:
            for iid, dev in by_id.items():
                print(f"simulating {iid} (unit {dev.unit_id}) on {serve_port}", flush=True)
            await stop.wait()
        finally:
            await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.modbus_rtu_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config_dir", type=Path)
    ap.add_argument("--serve", required=True, help="serial port the simulator opens (the far end of the gateway's)")
    ap.add_argument("--fault", action="append", default=[], metavar="ID=KNOB[:ARG]")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    return asyncio.run(_serve(args.config_dir, args.serve, args.fault, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
