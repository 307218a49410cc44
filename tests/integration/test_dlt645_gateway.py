"""DL/T 645 through the registry: configuration -> real pollers -> tagged readings, over a socat pty
bus and a TCP transparent gateway at once; `validate --live`; the config errors a technician sees."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.dlt645.di import data_item
from gateway.cli import main
from gateway.errors import ConfigErrors
from gateway.model import Quality
from gateway.registry import Config, load_config
from simulators.dlt645_server import Dlt645SerialServer, SimulatedMeter, build_simulators, meter_for_spec
from simulators.modbus_rtu_server import SocatPtyPair
from tests.conftest import free_port
from tests.helpers import PollingHarness, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[SocatPtyPair]:
    with SocatPtyPair(tmp_path / "ttySIM", tmp_path / "ttyGW") as pair:
        yield pair


def meter_yaml(iid: str, connection: str, interval: float = 0.3, extra: str = "") -> str:
    return f"""\
  - id: {iid}
    name: {iid} sub-meter
    kind: power_meter
    source_category: purchased_electricity_heat
    profile: dlt645_three_phase
    connection: {connection}
    poll_interval_s: {interval}
{extra}"""


def config(directory: Path, *instruments: str) -> Config:
    gateway_yaml = (f'gateway: {{id: gw-dlt645-test}}\nstore: {{path: "{directory / "gw.db"}"}}\n'
                    "limits: {backoff_min_s: 0.2, backoff_max_s: 0.4}\n")
    return load_config(write_config(directory, "instruments:\n" + "".join(instruments), gateway_yaml=gateway_yaml))


def expected(cfg: Config, iid: str, meter: SimulatedMeter, point: str) -> tuple[float, float]:
    """(value the gateway should report, tolerance): the meter's table value rounded to its format."""
    p = cfg.instrument(iid).point_index[point]
    step = data_item(p.wire.di).fmt.step
    return p.conversion.apply(meter.table_value(p.wire.di) * p.wire.scale + p.wire.offset), step


async def test_meters_on_a_pty_bus_and_behind_a_tcp_gateway(tmp_path: Path, pty_pair: SocatPtyPair) -> None:
    tcp_port = free_port()
    cfg = config(
        tmp_path,
        meter_yaml("EM-01", f'{{protocol: dlt645, port: "{pty_pair.b}", address: "000012345678", timeout_s: 0.3}}'),
        meter_yaml("EM-02", f'{{protocol: dlt645, port: "{pty_pair.b}", address: "12345679", timeout_s: 0.3}}',
                   extra="    points:\n      - {name: total_active_power, unit: W}\n"),
        meter_yaml("EM-03", f"{{protocol: dlt645_over_tcp, host: 127.0.0.1, port: {tcp_port}, "
                            f"address: 202311150001, timeout_s: 0.3}}",
                   extra="    only_points: [forward_active_energy, voltage_a, frequency]\n"),
        meter_yaml("EM-04", f'{{protocol: dlt645, port: "{pty_pair.b}", address: "5", timeout_s: 0.2}}', 0.3),
    )
    assert {s.protocol for s in cfg.instruments} == {"dlt645"}
    serial = {s.id: meter_for_spec(s, seed=i, start_s=43_200) for i, s in enumerate(cfg.instruments)
              if s.connection.protocol == "dlt645"}
    serial["EM-04"].faults.error = 0x04  # password error / unauthorised on every read
    bus = Dlt645SerialServer(str(pty_pair.a), list(serial.values()), update_interval_s=3600)
    (tcp,) = build_simulators(cfg.instruments, seed=7)
    tcp.update_interval_s = 3600
    await bus.start()
    await tcp.start()
    try:
        async with PollingHarness(cfg) as gw:
            assert len(gw.pollers) == 2  # the three serial meters share one bus, the TCP gateway is another
            await gw.wait_for(lambda: all(len(gw.polls(i)) >= 2 for i in ("EM-01", "EM-02", "EM-03", "EM-04")),
                              timeout_s=30)
    finally:
        await tcp.stop()
        await bus.stop()
    meters = {**serial, "EM-03": tcp.instruments["EM-03"]}
    for iid in ("EM-01", "EM-02", "EM-03"):
        spec = cfg.instrument(iid)
        for poll in gw.polls(iid)[:2]:
            assert [r.point for r in poll] == [p.name for p in spec.points]
            for r in poll:
                assert (r.quality, r.reason) == (Quality.GOOD, ""), r
                value, step = expected(cfg, iid, meters[iid], r.point)
                factor = 1000.0 if r.unit == "W" else 1.0
                assert r.value == pytest.approx(value, abs=factor * step / 2 + 1e-6), (iid, r.point)
        assert gw.health(iid).consecutive_failures == 0
    power = next(r for r in gw.of("EM-02") if r.point == "total_active_power")
    assert power.unit == "W"  # kW from the meter, W as configured
    assert power.value is not None
    assert power.value > 1000
    assert {(r.quality, r.reason) for r in gw.of("EM-04")} == {(Quality.BAD, "dlt645_unauthorised")}
    assert gw.health("EM-04").consecutive_failures == 0  # the meter answers: the line is fine, the data is not


async def test_silent_meter_is_bad_timeout_and_backs_off(tmp_path: Path, pty_pair: SocatPtyPair) -> None:
    cfg = config(tmp_path,
                 meter_yaml("EM-01", f'{{protocol: dlt645, port: "{pty_pair.b}", address: "1", timeout_s: 0.1}}'),
                 meter_yaml("EM-02", f'{{protocol: dlt645, port: "{pty_pair.b}", address: "2", timeout_s: 0.1}}'))
    meters = {s.id: meter_for_spec(s, seed=1) for s in cfg.instruments}
    meters["EM-02"].faults.timeout = True
    bus = Dlt645SerialServer(str(pty_pair.a), list(meters.values()), update_interval_s=3600)
    await bus.start()
    try:
        async with PollingHarness(cfg) as gw:
            await gw.wait_for(lambda: len(gw.polls("EM-02")) >= 2 and len(gw.polls("EM-01")) >= 3, timeout_s=30)
    finally:
        await bus.stop()
    assert {(r.quality, r.reason) for r in gw.of("EM-02")} == {(Quality.BAD, "timeout")}
    assert gw.health("EM-02").consecutive_failures >= 2
    assert "no answer" in gw.health("EM-02").last_error
    assert {(r.quality, r.reason) for r in gw.of("EM-01")} == {(Quality.GOOD, "")}


async def run_live(cfg_dir: Path) -> int:
    return await asyncio.to_thread(main, ["validate", "--config", str(cfg_dir), "--live"])


async def test_validate_live_reads_each_meter_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    conn = f"{{protocol: dlt645_over_tcp, host: 127.0.0.1, port: {port}, address: \"42\", timeout_s: 0.5}}"
    good = meter_yaml("EM-01", conn, extra="    points:\n      - {name: voltage_a, expect: [200, 260]}\n")
    cfg_dir = write_config(tmp_path / "good", "instruments:\n" + good)
    (srv,) = build_simulators(load_config(cfg_dir).instruments)
    await srv.start()
    try:
        assert await run_live(cfg_dir) == 0
        assert "ok (1 instrument" in capsys.readouterr().out
        # A CT-connected meter registered with the wrong ratio: the value is off by the factor.
        wrong = good.replace("{name: voltage_a, expect: [200, 260]}",
                             "{name: voltage_a, scale: 100, expect: [200, 260]}")
        assert await run_live(write_config(tmp_path / "bad", "instruments:\n" + wrong)) == 2
    finally:
        await srv.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.match(r"^.+plant\.yaml:\d+: EM-01\.voltage_a: read .+ V, expected 200\.\.260 \(check the DI and scale",
                    err[0]), err[0]


@pytest.mark.parametrize(("connection", "extra", "message"), [
    ('{protocol: dlt645, port: /dev/ttyUSB0, address: "12345678901234"}', "", r"connection\.address: .*pattern"),
    ('{protocol: dlt645, port: /dev/ttyUSB0, address: "1"}', '    points:\n      - {name: x, di: "12345678", '
     "device_unit: kWh}\n", r"points\[0\].*12345678 is not in the DL/T 645 table"),
    ('{protocol: dlt645, port: /dev/ttyUSB0, address: "1"}', "    points:\n      - {name: x, di: 02010100, "
     "device_unit: V}\n", r"points\[0\]\.di: .*quoted hex string"),
    ('{protocol: dlt645, port: /dev/ttyUSB0, address: "1"}', '    points:\n      - {name: x, di: "02010100", '
     "device_unit: kV}\n", r"reported in V, not kV"),
    ('{protocol: dlt645, port: /dev/ttyUSB0, address: "1"}', '    points:\n      - {name: x, di: "02010100", '
     "table: input, device_unit: V}\n", r"table.*Modbus"),
    ('{protocol: dlt645, port: /dev/ttyUSB0, address: "1", unit_id: 3}', "", r"connection\.unit_id"),
])
def test_config_errors_point_at_the_line(tmp_path: Path, connection: str, extra: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        config(tmp_path, meter_yaml("EM-01", connection, extra=extra))
    lines = str(info.value).splitlines()
    assert any(re.search(message, line) and re.match(r"^.+plant\.yaml:\d+: ", line) for line in lines), lines


def test_two_instruments_at_one_address_or_with_other_line_settings_on_one_bus(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        config(tmp_path,
               meter_yaml("EM-01", '{protocol: dlt645, port: /dev/ttyUSB0, address: "7"}'),
               meter_yaml("EM-02", '{protocol: dlt645, port: /dev/ttyUSB0, address: "000000000007"}'),
               meter_yaml("EM-03", '{protocol: dlt645, port: /dev/ttyUSB0, address: "8", baudrate: 9600}'))
    text = str(info.value)
    assert "meter 000000000007 is already used by instrument EM-01" in text
    assert "serial settings (9600, 'E', 1, 8) differ from instrument EM-01" in text
