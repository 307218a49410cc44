"""The estimate channel (issue 10 item 9): a best available estimate (40 CFR 98.35(b)(2), Reg. (EU) 2018/2066
Art. 45(4)) queued by `carbon-gateway estimate`, ingested once through the corrections inbox into a real
store, and used by the best_available_estimate selector: a new version of each hour it covers."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.corrections import Inbox, inbox_for
from gateway.model import Calibration, Derived, Quality, Reading
from gateway.registry import Config, load_config
from gateway.rules_stage import RulesStage, apply_estimates
from gateway.store import Store
from tests.helpers import write_config

H = 3_600_000
T0 = 490_000 * H

INSTRUMENT = """\
instruments:
  - id: CEMS-01
    name: stack CEMS
    kind: gas_analyzer
    measuring_range: {min: 0, max: 25, unit: "%vol"}
    profile: cems_generic
    only_points: [co2, flue_gas_flow]
    connection: {protocol: modbus_tcp, host: 127.0.0.1, port: 15022, unit_id: 1}
    poll_interval_s: 60
    points:
      - name: flue_gas_flow
        feeds_emissions: true
        direction: high
        missing_data: {selector: best_available_estimate, default_value: 400000.0,
                       citation: "monitoring plan C.5: energy balance"}
      - name: co2
        feeds_emissions: true
        direction: high
        missing_data: {selector: part75_tiered, max_potential: 15.0}
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path / "cfg", INSTRUMENT, store=tmp_path / "gw.db"))


def flow_hours(stage: RulesStage, pattern: str) -> list[Derived]:
    """'g': 300,000 Nm3/h (+-0.25 so it is not frozen), 'x': communication lost; the next hour closes the last."""
    derived: list[Derived] = []
    for h, kind in enumerate(pattern + "g"):
        batch = []
        for m in range(60):
            ts = T0 + h * H + m * 60_000
            if kind == "g":
                batch.append(Reading("CEMS-01", "flue_gas_flow", ts, 300_000.0 + (m % 3 - 1) * 0.25, "Nm3/h",
                                     Quality.GOOD, "", Calibration.VALID))
            else:
                batch.append(Reading("CEMS-01", "flue_gas_flow", ts, None, "Nm3/h", Quality.BAD, "no_communication",
                                     Calibration.VALID))
        derived += stage.process(batch)[1]
        if h < len(pattern):
            derived += stage.tick(T0 + (h + 1) * H)
    return derived


def subs(derived: list[Derived]) -> list[dict]:
    return [d.body for d in derived if d.kind == "substitutes" and d.point == "flue_gas_flow"]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_estimate_is_ingested_once_and_reissues_the_hours_it_covers(cfg: Config, tmp_path: Path) -> None:
    stage = RulesStage(cfg.instruments, now_ms=T0)
    derived = flow_hours(stage, "ggxxg")
    first = {s["hour"]: s for s in subs(derived) if s["status"] == "final"}
    # No estimate yet: the configured default, 400,000 (method 12), saying it awaits an estimate.
    assert sorted(first) == [T0 // H + 2, T0 // H + 3]
    assert {s["value"] for s in first.values()} == {400_000.0}
    assert first[T0 // H + 2]["trace"]["notes"] == ["awaiting a best available estimate (carbon-gateway estimate)"]
    path = tmp_path / "gw.db"
    with contextlib.closing(Store(path)) as store:
        store.commit([], now_ms=T0 + 6 * H, per_message=500, derived=derived)
        code = main(["estimate", "--config", str(tmp_path / "cfg"), "--store", str(path), "--instrument", "CEMS-01",
                     "--point", "flue_gas_flow", "--from", iso(T0 + 2 * H), "--to", iso(T0 + 4 * H),
                     "--value", "310000", "--author", "J. Li", "--basis", "steam flow and heat rate",
                     "--method", "energy balance, plan C.5"])
        assert code == 0
        inbox = Inbox(inbox_for(path), cfg)
        got = inbox.collect(store, T0 + 7 * H)
        assert len(got.records) == 1
        est = got.records[0].body
        assert (est["type"], est["author"], est["basis"], est["method"]) == (
            "estimate", "J. Li", "steam flow and heat rate", "energy balance, plan C.5")
        new = apply_estimates(stage, store, got.records)
        store.commit([], now_ms=T0 + 7 * H, per_message=500, derived=got.records + new, ingested=got.hashes)
        queued = got.files[0].read_bytes()
        inbox.remove(got.files)
        # The same file dropped in again is never stored twice (its SHA-256 is in the store).
        got.files[0].write_bytes(queued)
        assert inbox.collect(store, T0 + 8 * H).records == []
    second = {s["hour"]: s for s in subs(new)}
    assert sorted(second) == [T0 // H + 2, T0 // H + 3]
    for h, s in second.items():
        assert s["value"] == 310_000.0
        assert s["version"] == first[h]["version"] + 1  # provisional (1), final default (2), estimate (3)
        assert s["supersedes"] == first[h]["record_id"]
        assert s["trace"]["method_code"] == "G5"
        assert s["trace"]["citation"].startswith("40 CFR 98.35(b)(2)")
        assert s["trace"]["statistics"]["author"] == "J. Li"
        assert s["trace"]["statistics"]["estimate_id"] == est["id"]


def test_estimate_given_before_the_gap_closes_is_used_at_once(cfg: Config) -> None:
    stage = RulesStage(cfg.instruments, now_ms=T0)
    stage.add_estimates([{"instrument": "CEMS-01", "point": "flue_gas_flow", "ts": T0 + 2 * H, "hour_end": T0 + 3 * H,
                          "value": 305_000.0, "id": "e1", "author": "a", "basis": "b", "method": "m"}])
    final = [s for s in subs(flow_hours(stage, "ggxxg")) if s["status"] == "final"]
    assert {s["hour"]: s["value"] for s in final} == {T0 // H + 2: 305_000.0, T0 // H + 3: 400_000.0}


def test_restart_restores_the_estimates_from_the_store(cfg: Config, tmp_path: Path) -> None:
    from gateway.rules_stage import load_rules

    body = {"type": "estimate", "instrument": "CEMS-01", "point": "flue_gas_flow", "ts": T0 + 2 * H,
            "hour_end": T0 + 3 * H, "value": 305_000.0, "id": "e1", "author": "a", "basis": "b", "method": "m"}
    with contextlib.closing(Store(tmp_path / "r.db")) as store:
        store.commit([], now_ms=T0, per_message=500, derived=[Derived("corrections", "CEMS-01", "flue_gas_flow",
                                                                      T0 + 2 * H, body)])
        stage = load_rules(cfg.instruments, store, T0)
    final = [s for s in subs(flow_hours(stage, "ggxg")) if s["status"] == "final"]
    assert [s["value"] for s in final] == [305_000.0]


@pytest.mark.parametrize(("args", "message"), [
    (["--point", "co2"], "takes no estimates (best_available_estimate does)"),
    (["--point", "flue_gas_flow", "--from", "2025-11-24T16:30:00Z"], "period boundaries"),
    (["--point", "flue_gas_flow", "--basis", " "], "author, basis and method"),
])
def test_estimate_cli_refuses_with_one_line(cfg: Config, tmp_path: Path, args: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    Store(tmp_path / "gw.db").close()
    base = {"--instrument": "CEMS-01", "--from": iso(T0), "--to": iso(T0 + H), "--value": "1", "--author": "a",
            "--basis": "b", "--method": "m"}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["estimate", "--config", str(tmp_path / "cfg"), "--store", str(tmp_path / "gw.db")]
    for k, v in {**base, **given}.items():
        argv += [k, v]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(inbox_for(tmp_path / "gw.db").glob("*.json")) if inbox_for(tmp_path / "gw.db").exists() else True
    json.dumps(err)
