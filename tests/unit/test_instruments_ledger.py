"""`carbon-gateway instruments`: the ledger (standard 10.1.3 d, 10.5.4) and the calibrations falling due."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.cli_instruments import FIELDS, parse_due
from gateway.errors import ConfigError
from tests.helpers import write_config

REPO = Path(__file__).resolve().parents[2]


def meter(iid: str, calibration: str | None, *, status: str = "in_service", port: int = 15020) -> str:
    cal = f"    calibration: {calibration}\n" if calibration is not None else ""
    return (f"  - id: {iid}\n    name: meter {iid}\n    kind: power_meter\n    status: {status}\n{cal}"
            f"    profile: eastron_sdm630\n"
            f"    connection: {{protocol: modbus_tcp, host: 127.0.0.1, port: {port}, unit_id: 1}}\n"
            f"    only_points: [voltage_l1]\n")


PLANT = "instruments:\n" + "".join([
    meter("LATER", "{last_date: 2026-06-01, due_date: 2027-03-01}", port=15020),
    meter("OVERDUE", "{last_date: 2025-11-01, interval_months: 12, certificate: C-9, agency: NIM}", port=15021),
    meter("SOON", "{last_date: 2025-12-10, interval_months: 12, mandatory_verification: true, method: verification,"
          " specification: JJG 596-2012, result: pass}", port=15022),
    meter("NORECORD", None, port=15023),
    meter("RETIRED", "{last_date: 2020-01-01, interval_months: 12}", status="retired", port=15024),
    meter("EDGE", "{last_date: 2026-01-01, due_date: 2026-12-30}", port=15025),
])
TODAY = "2026-11-30"


def run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    cfg = write_config(tmp_path / "cfg", PLANT.replace("    status: retired\n", "    status: retired\n"))
    (cfg / "gateway.yaml").write_text(f"gateway: {{id: gw, timezone: Asia/Shanghai}}\n"
                                      f"store: {{path: {tmp_path / 'gw.db'}}}\n")
    rc = main(["instruments", "--config", str(cfg), "--today", TODAY, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_ledger_has_every_field_of_every_instrument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(tmp_path, capsys, "--format", "json")
    assert rc == 0
    rows = {r["id"]: r for r in json.loads(out)}
    assert set(rows) == {"LATER", "OVERDUE", "SOON", "NORECORD", "RETIRED", "EDGE"}
    assert all(tuple(r) == FIELDS for r in rows.values())
    soon = rows["SOON"]
    assert (soon["due_date"], soon["days_left"], soon["calibration_status"]) == ("2026-12-10", 10, "due_soon")
    assert (soon["method"], soon["specification"], soon["result"], soon["mandatory_verification"]) == \
        ("verification", "JJG 596-2012", "pass", True)
    assert rows["OVERDUE"]["calibration_status"] == "expired"
    assert rows["OVERDUE"]["days_left"] == -29
    assert rows["NORECORD"]["calibration_status"] == "unknown"
    assert rows["LATER"]["calibration_status"] == "valid"
    assert rows["EDGE"]["calibration_status"] == "due_soon"  # due in 30 days = due_soon_days: due_soon from today


def test_due_lists_overdue_first_then_by_due_date_then_no_record_never_retired(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(tmp_path, capsys, "--due", "30d", "--format", "json")
    assert rc == 0
    assert [r["id"] for r in json.loads(out)] == ["OVERDUE", "SOON", "EDGE", "NORECORD"]
    rc, out, err = run(tmp_path, capsys, "--due", "29")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["OVERDUE", "SOON", "NORECORD"]
    assert "3 instruments due within 29 days or overdue on 2026-11-30 (Asia/Shanghai); 1 overdue" in err


def test_csv_has_a_header_and_one_row_per_instrument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(tmp_path, capsys, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0
    assert tuple(rows[0]) == FIELDS
    assert len(rows) == 6
    assert next(r for r in rows if r["id"] == "OVERDUE")["certificate"] == "C-9"


def test_sample_configuration_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["instruments", "--config", str(REPO / "config"), "--today", TODAY, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in rows} == {"PM-01", "FT-01", "CEMS-01", "CEMS-02"}
    assert all(r["serial_number"] and r["location"] and r["accuracy_class"] for r in rows)


@pytest.mark.parametrize(("text", "days"), [("30d", 30), ("30", 30), ("6w", 42), ("3m", 90), ("0d", 0)])
def test_parse_due(text: str, days: int) -> None:
    assert parse_due(text) == days


@pytest.mark.parametrize("text", ["", "-3d", "30 days", "1y", "3.5d"])
def test_parse_due_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="not a number of days"):
        parse_due(text)


def test_bad_due_is_exit_2_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(tmp_path, capsys, "--due", "soon")
    assert rc == 2
    assert err.strip() == "--due: 'soon' is not a number of days: write e.g. 30d, 6w or 3m"


LEDGER_ERRORS = {
    "unknown method": ("{last_date: 2026-01-01, interval_months: 12, method: guess}", "calibration.method",
                       "Input should be 'verification', 'calibration', 'self_check', 'comparison' or 'replacement'"),
    "mandatory needs verification": (
        "{last_date: 2026-01-01, interval_months: 12, mandatory_verification: true, method: self_check}",
        "calibration.method", "method must be 'verification', not 'self_check'"),
    "failed and in service": ("{last_date: 2026-01-01, interval_months: 12, result: fail}", "calibration.result",
                              "only confirmed instruments stay in use (standard 10.5.4 e)"),
}


@pytest.mark.parametrize("case", sorted(LEDGER_ERRORS))
def test_ledger_mistakes_are_one_located_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calibration, field, message = LEDGER_ERRORS[case]
    write_config(tmp_path, "instruments:\n" + meter("M1", calibration))
    rc = main(["validate", "--config", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"{tmp_path / 'instruments' / 'plant.yaml'}:6: instruments[0].{field}: "), err
    assert message in err[0]


def test_a_failed_instrument_on_standby_is_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, "instruments:\n" + meter("M1", "{last_date: 2026-01-01, interval_months: 12, result: fail}",
                                                   status="standby"))
    assert main(["validate", "--config", str(tmp_path)]) == 0


def test_ledger_status_is_the_readings_status_at_every_instant_of_the_day() -> None:
    """Today's ledger status equals gateway/calibration.py's status for a reading at any time of today."""
    from datetime import date, datetime, time, timedelta
    from zoneinfo import ZoneInfo

    from gateway.calibration import window_for
    from gateway.cli_instruments import ledger_row
    from gateway.registry import load_config

    cfg = load_config(REPO / "config")
    tz = ZoneInfo("Asia/Shanghai")
    for spec in cfg.instruments:
        cal = spec.model.calibration
        assert cal is not None
        due = date.fromisoformat(ledger_row(spec, date(2026, 1, 1), 30)["due_date"])
        window = window_for(cal.last_date, due, due_soon_days=30, tz=tz)
        days = [cal.last_date - timedelta(days=1), cal.last_date, due - timedelta(days=31),
                due - timedelta(days=30), due, due + timedelta(days=1)]
        for day in days:
            for at in (time(0, 0), time(12, 0), time(23, 59, 59)):
                ms = int(datetime.combine(day, at, tzinfo=tz).timestamp() * 1000)
                assert ledger_row(spec, day, 30)["calibration_status"] == window.status_at(ms).value, (spec.id, day)
