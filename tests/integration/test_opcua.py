"""OPC UA driver against the bundled asyncua CEMS simulator on real loopback sockets (nothing mocked).

Timing rule: tests wait for *counts* (samples, polls, outage heartbeats) and bound behaviour in numbers
of publishing intervals; the only clock limit is a generous safety timeout so a broken driver fails
instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.spec import OpcUaDevice, OpcUaPoint, PointMode
from gateway.model import Quality, RawSample
from simulators.opcua_server import MEASUREMENTS, NAMESPACE_URI, CemsOpcUaSimulator, free_port, node_id

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")

PUBLISH_MS = 50.0
REPO = Path(__file__).resolve().parents[2]
SAFETY_S = 15.0  # only to turn a hang into a failure; never an assertion about speed
POINTS = tuple(MEASUREMENTS)  # CO2, O2, FlueGasFlow, Temperature, Pressure, Moisture


class Collector:
    """A sink that records everything and lets a test wait for a predicate over what it has seen."""

    def __init__(self) -> None:
        self.samples: list[RawSample] = []
        self.batches: list[list[RawSample]] = []
        self._changed = asyncio.Event()

    async def __call__(self, instrument: str, samples: Sequence[RawSample]) -> None:
        assert instrument == "CEMS-01"
        self.batches.append(list(samples))
        self.samples.extend(samples)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(SAFETY_S):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"never saw: {what}")

    def since(self, mark: int, point: str | None = None) -> list[RawSample]:
        return [s for s in self.samples[mark:] if point is None or s.point == point]

    def count(self, mark: int, point: str, pred: Callable[[RawSample], bool]) -> int:
        return sum(1 for s in self.since(mark, point) if pred(s))


def good(s: RawSample) -> bool:
    return s.quality is Quality.GOOD and s.value is not None


def no_comm(s: RawSample) -> bool:
    return s.quality is Quality.BAD and s.reason == "no_communication" and s.value is None


def cems_device(endpoint: str, *, poll: Sequence[str] = (), extra: Sequence[OpcUaPoint] = (),
                deadband: dict[str, float] | None = None, **kw: Any) -> OpcUaDevice:
    points = [
        OpcUaPoint(name, node_id(name), mode=PointMode.POLL if name in poll else PointMode.SUBSCRIBE,
                   deadband_abs=(deadband or {}).get(name))
        for name in POINTS
    ]
    settings: dict[str, Any] = {
        "publishing_interval_ms": PUBLISH_MS,
        "poll_interval_s": PUBLISH_MS / 1000,
        "health_node_id": node_id("DeviceHealth"),
        "calibration_node_id": node_id("CalibrationInProgress"),
        "timeout_s": 1.0,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
        **kw,
    }
    return OpcUaDevice("CEMS-01", endpoint, (*points, *extra), **settings)


@contextlib.asynccontextmanager
async def running(driver: OpcUaDriver, sink: Collector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(driver.run(sink), name="opcua-driver-under-test")
    try:
        yield task
    finally:
        await driver.close()
        assert task.done()
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@pytest.fixture
async def sim() -> AsyncIterator[CemsOpcUaSimulator]:
    async with CemsOpcUaSimulator(port=free_port(), update_interval_s=0.05, seed=7) as s:
        yield s


async def wait_all_good(sink: Collector, mark: int, n: int = 2) -> None:
    await sink.wait_for(lambda: all(sink.count(mark, p, good) >= n for p in POINTS), f"{n} good samples per point")


# --- normal operation --------------------------------------------------------------------------------


async def test_subscription_values_arrive_good_with_source_timestamps(sim: CemsOpcUaSimulator) -> None:
    extra = [
        OpcUaPoint("CO2_by_uri", f"nsu={NAMESPACE_URI};s=CEMS.CO2", scale=10_000.0),  # %vol -> ppm
        OpcUaPoint("Ghost", "ns=2;s=CEMS.DoesNotExist"),  # the server refuses to monitor it
    ]
    # Temperature moves ~0.5 degC per update; a 1000 degC deadband lets only the initial value through.
    device = cems_device(sim.endpoint, extra=extra, deadband={"Temperature": 1000.0})
    driver, sink = OpcUaDriver(device), Collector()
    async with running(driver, sink):
        await sink.wait_for(lambda: all(sink.count(0, p, good) >= 10 for p in ("CO2", "O2", "CO2_by_uri")),
                            "10 CO2/O2 notifications")
        await sink.wait_for(lambda: sink.count(0, "Ghost", lambda s: True) >= 3, "3 Ghost samples")
    for name, (_start, low, high, _sigma, _unit) in MEASUREMENTS.items():
        values = [s for s in sink.samples if s.point == name]
        assert values
        assert all(good(s) and s.reason == "" and s.status == 0 for s in values), name
        assert all(low <= s.value <= high for s in values if s.value is not None), name
    assert sink.count(0, "Temperature", good) == 1  # deadband
    ppm = [s.value for s in sink.samples if s.point == "CO2_by_uri" and s.value is not None]
    assert all(100_000.0 <= v <= 140_000.0 for v in ppm)  # nsu= id resolved, scale applied
    # Timestamps are the simulator's SourceTimestamps (a fresh one per update).
    co2 = [s.ts_ms for s in sink.samples if s.point == "CO2"]
    assert co2 == sorted(co2)
    assert len(set(co2)) == len(co2)
    # A refused monitored item is polled instead, so its failure is recorded rather than silent.
    ghost = [s for s in sink.samples if s.point == "Ghost"]
    assert all((s.quality, s.reason, s.value) == (Quality.BAD, "BadNodeIdUnknown", None) for s in ghost)
    assert driver.stats.sessions == 1
    assert driver.stats.outages == 0


async def test_poll_mode_reads_all_points_in_one_request(sim: CemsOpcUaSimulator) -> None:
    driver, sink = OpcUaDriver(cems_device(sim.endpoint, poll=POINTS)), Collector()
    async with running(driver, sink):
        await sink.wait_for(lambda: driver.stats.polls >= 4, "4 polls")
    assert driver.stats.notifications == 0  # no subscription at all
    assert len(sink.batches) == driver.stats.polls
    for batch in sink.batches:
        assert [s.point for s in batch] == list(POINTS)  # one read -> one batch with every point
        assert all(good(s) for s in batch)


# --- statuses and device health --------------------------------------------------------------------


async def test_bad_and_uncertain_statuses_keep_the_opcua_code(sim: CemsOpcUaSimulator) -> None:
    driver, sink = OpcUaDriver(cems_device(sim.endpoint, poll=("Moisture",))), Collector()
    async with running(driver, sink):
        await wait_all_good(sink, 0)

        mark = len(sink.samples)
        await sim.set_bad_status(ua.StatusCodes.BadSensorFailure, "CO2")
        await sim.set_bad_status(ua.StatusCodes.UncertainEngineeringUnitsExceeded, "O2")
        await sink.wait_for(
            lambda: sink.count(mark, "CO2", lambda s: s.quality is Quality.BAD) >= 1
            and sink.count(mark, "O2", lambda s: s.quality is Quality.UNCERTAIN) >= 1,
            "bad CO2 and uncertain O2",
        )
        bad = next(s for s in sink.since(mark, "CO2") if s.quality is Quality.BAD)
        assert (bad.value, bad.reason, bad.status) == (
            None, "fault:BadSensorFailure", ua.StatusCodes.BadSensorFailure)
        unc = next(s for s in sink.since(mark, "O2") if s.quality is Quality.UNCERTAIN)
        assert unc.value is not None  # Uncertain keeps the value
        assert (unc.reason, unc.status) == (
            "over_range:UncertainEngineeringUnitsExceeded", ua.StatusCodes.UncertainEngineeringUnitsExceeded)
        assert sink.count(mark, "FlueGasFlow", good) >= 1  # the others are untouched

        mark = len(sink.samples)
        await sim.set_bad_status(ua.StatusCodes.BadNoCommunication)  # all variables, polled one too
        expected = "no_communication:BadNoCommunication"
        await sink.wait_for(lambda: all(sink.count(mark, p, lambda s: s.reason == expected) >= 1 for p in POINTS),
                            "BadNoCommunication on every point")

        mark = len(sink.samples)
        await sim.clear_bad_status()
        await wait_all_good(sink, mark)
    assert driver.stats.outages == 0  # bad data is data, not a communication failure


async def test_calibration_marks_every_point_bad_but_carries_values(sim: CemsOpcUaSimulator) -> None:
    driver, sink = OpcUaDriver(cems_device(sim.endpoint, poll=("Pressure",))), Collector()
    async with running(driver, sink):
        await wait_all_good(sink, 0)
        await sim.set_calibration(True)
        await sink.wait_for(lambda: any(s.reason == "calibration" for s in sink.samples), "a calibration sample")
        first = next(i for i, s in enumerate(sink.samples) if s.reason == "calibration")
        await sink.wait_for(lambda: all(sink.count(first, p, lambda s: True) >= 3 for p in POINTS),
                            "3 samples per point during calibration")
        during = sink.since(first)
        await sim.set_calibration(False)
        mark = len(sink.samples)
        await wait_all_good(sink, mark)
    # Once the analyzer says "calibrating", every sample (subscribed and polled) is bad/calibration,
    # and the readings themselves are still there (span gas on CO2), never averaged as good data.
    assert all(s.quality is Quality.BAD and s.reason == "calibration" for s in during)
    assert all(s.value is not None and s.status == 0 for s in during)
    assert any(abs(s.value - 15.0) < 0.5 for s in during if s.point == "CO2" and s.value is not None)


async def test_device_health_maps_to_ne107(sim: CemsOpcUaSimulator) -> None:
    driver, sink = OpcUaDriver(cems_device(sim.endpoint, poll=("Moisture",))), Collector()
    expected = [(1, Quality.BAD, "fault"), (3, Quality.UNCERTAIN, "out_of_spec"),
                (4, Quality.GOOD, "maintenance_required"), (2, Quality.BAD, "maintenance")]
    async with running(driver, sink):
        await wait_all_good(sink, 0)
        for health, quality, reason in expected:
            mark = len(sink.samples)
            await sim.set_health(health)
            await sink.wait_for(lambda r=reason, m=mark: any(s.reason == r for s in sink.samples[m:]),
                                f"a {reason} sample")
            first = next(i for i, s in enumerate(sink.samples) if i >= mark and s.reason == reason)
            await sink.wait_for(lambda f=first: all(sink.count(f, p, lambda s: True) >= 2 for p in POINTS),
                                "2 samples per point")
            flagged = sink.since(first)
            assert all((s.quality, s.reason) == (quality, reason) for s in flagged), health
            assert all(s.value is not None for s in flagged), health
        await sim.set_health(0)
        await wait_all_good(sink, len(sink.samples))


# --- faults: restart, watchdog --------------------------------------------------------------------


def assert_gap_is_visible(sink: Collector, stop_mark: int, restart_mark: int) -> None:
    """Per point: good before, then >= 1 no_communication, then good after. No silent hole."""
    for p in POINTS:
        before = [s for s in sink.samples[:stop_mark] if s.point == p]
        gap = [s for s in sink.samples[stop_mark:restart_mark] if s.point == p]
        after = [s for s in sink.samples[restart_mark:] if s.point == p]
        assert before, p
        assert good(before[-1]), p
        assert any(no_comm(s) for s in gap), p
        assert after, p
        assert good(after[-1]), p


async def test_server_restart_gap_is_recorded_and_data_resumes(sim: CemsOpcUaSimulator) -> None:
    driver, sink = OpcUaDriver(cems_device(sim.endpoint)), Collector()
    async with running(driver, sink):
        await wait_all_good(sink, 0, n=3)
        stop_mark = len(sink.samples)
        await sim.stop()
        # While the server is down, every point gets one no_communication sample per publishing interval.
        await sink.wait_for(lambda: all(sink.count(stop_mark, p, no_comm) >= 5 for p in POINTS),
                            "5 no_communication heartbeats per point")
        await sim.start()  # same port, fresh server: new session and subscription must be built
        restart_mark = len(sink.samples)
        await wait_all_good(sink, restart_mark, n=3)
        # Bounded resumption, counted in publishing intervals: the outage heartbeat keeps ticking once per
        # interval until the new session is open, so this is how many intervals recovery took.
        # Budget: reconnect_max_s (4 intervals) + connect + first publish, with generous slack.
        late = sink.count(restart_mark, "CO2", no_comm)
        assert late <= 20, f"data resumed only after {late} publishing intervals"
    assert_gap_is_visible(sink, stop_mark, restart_mark)
    assert all(s.value is None and s.status is None for s in sink.samples if no_comm(s))
    assert driver.stats.sessions == 2
    assert driver.stats.outages == 1
    assert driver.stats.watchdog_expiries == 0  # the socket close was seen directly


async def test_watchdog_detects_a_subscription_that_silently_died(
    sim: CemsOpcUaSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.opcua.driver")
    # Moisture is polled every publishing interval: its good samples are the clock for this test.
    driver, sink = OpcUaDriver(cems_device(sim.endpoint, poll=("Moisture",))), Collector()
    async with running(driver, sink):
        await wait_all_good(sink, 0, n=3)
        mark = len(sink.samples)
        assert await sim.drop_subscriptions() == 1  # the server stays up; publishing just stops
        await sink.wait_for(lambda: sink.count(mark, "CO2", no_comm) >= 1, "a no_communication sample")
        detected = next(i for i, s in enumerate(sink.samples) if i >= mark and no_comm(s))
        polls_before_detection = sink.count(mark, "Moisture", good) - sink.count(detected, "Moisture", good)
        recovered = len(sink.samples)
        await wait_all_good(sink, recovered, n=3)
    # watchdog_intervals=3: detection within 3 publishing intervals, plus slack for the poll/watchdog phase.
    assert polls_before_detection <= 3 + 4, polls_before_detection
    assert driver.stats.watchdog_expiries == 1
    assert driver.stats.sessions == 2
    assert any("watchdog" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert any("recovered" in r.getMessage() and r.levelname == "INFO" for r in caplog.records)


async def test_frozen_values_do_not_trip_the_watchdog(sim: CemsOpcUaSimulator) -> None:
    driver, sink = OpcUaDriver(cems_device(sim.endpoint, poll=("Moisture",))), Collector()
    async with running(driver, sink):
        await wait_all_good(sink, 0)
        await sim.set_frozen(True)
        await asyncio.sleep(0)  # let an update already in flight land
        mark = len(sink.samples)
        # 4 x watchdog_intervals polls = 12 publishing intervals with no value changes at all.
        await sink.wait_for(lambda: sink.count(mark, "Moisture", good) >= 12, "12 polls while frozen")
        co2_while_frozen = sink.count(mark, "CO2", lambda s: True)
    # Keep-alives (MaxKeepAliveCount=1) prove the subscription alive although nothing changes.
    assert co2_while_frozen <= 1
    assert driver.stats.watchdog_expiries == 0
    assert not any(no_comm(s) for s in sink.samples)


# --- acceptance: kill -9 the simulator process and restart it ---------------------------------------


async def spawn_simulator(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.opcua_server", "--port", str(port), "--update-interval", "0.05",
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    async with asyncio.timeout(SAFETY_S):
        line = await proc.stdout.readline()
    assert line.decode().startswith("READY opc.tcp://"), line
    return proc


async def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def test_killed_and_restarted_simulator_process() -> None:
    port = free_port()
    driver, sink = OpcUaDriver(cems_device(f"opc.tcp://127.0.0.1:{port}/")), Collector()
    proc: asyncio.subprocess.Process | None = None
    try:
        async with running(driver, sink):
            # Nothing listens yet: the gap is recorded from the first second, not only after data flowed.
            await sink.wait_for(lambda: all(sink.count(0, p, no_comm) >= 2 for p in POINTS), "startup gap")
            proc = await spawn_simulator(port)
            await wait_all_good(sink, 0, n=3)
            stop_mark = len(sink.samples)
            await kill(proc)  # SIGKILL: no goodbye from the server
            await sink.wait_for(lambda: all(sink.count(stop_mark, p, no_comm) >= 3 for p in POINTS),
                                "no_communication after the kill")
            proc = await spawn_simulator(port)
            restart_mark = len(sink.samples)
            await wait_all_good(sink, restart_mark, n=3)
            late = sink.count(restart_mark, "CO2", no_comm)
            assert late <= 20, f"data resumed only after {late} publishing intervals"
        assert_gap_is_visible(sink, stop_mark, restart_mark)
        assert driver.stats.sessions == 2
    finally:
        if proc is not None:
            await kill(proc)
    # SIGTERM stops the simulator cleanly (main() handles it).
    proc = await spawn_simulator(port)
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(SAFETY_S):
        assert await proc.wait() == 0
