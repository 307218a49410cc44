"""Configuration history (issue 11 item 2): the manifest diff (pure), the append-only table, its migration."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import config_history as ch
from gateway.registry import load_config
from gateway.store import Store
from gateway.store_schema import SCHEMA_VERSION
from tests.helpers import three_meters, write_config

ROOT = Path(__file__).resolve().parents[2]
PORTS = (15020, 15021, 15022)


def config(tmp_path: Path, text: str | None = None, name: str = "cfg"):
    return load_config(write_config(tmp_path / name, text or three_meters(PORTS), store=tmp_path / "gw.db"))


def test_first_configuration_and_unchanged() -> None:
    m = {"settings": {"mqtt": "a"}, "instruments": {"A": {"points": {}}}}
    assert ch.changes(None, m) == {"first": 1}
    assert ch.changes(m, m) == {}
    assert ch.summary({}) == "unchanged"


def test_changes_name_added_removed_units_scales_calibration(tmp_path: Path) -> None:
    old = config(tmp_path, name="a")
    text = three_meters(PORTS).replace("  - id: FT-01", "  - id: FT-02")  # FT-01 removed, FT-02 added
    text = text.replace("calibration: {last_date: 2026-10-30, due_date: 2026-12-05}",
                        "calibration: {last_date: 2026-11-20, due_date: 2027-11-20, certificate: C-9}")
    text = text.replace("only_points: [voltage_l1, total_active_power, total_import_active_energy]",
                        "only_points: [voltage_l1, total_active_power]\n    points:\n"
                        "      - {name: voltage_l1, scale: 0.1}\n      - {name: total_active_power, unit: W}")
    new = config(tmp_path, text, name="b")
    c = ch.changes(ch.manifest(old), ch.manifest(new))
    assert c["added"] == ["FT-02"]
    assert c["removed"] == ["FT-01"]
    assert c["changed"]["CEMS-01"]["calibration"][1]["certificate"] == "C-9"
    pm = c["changed"]["PM-01"]
    assert pm["points_removed"] == ["total_import_active_energy"]
    assert pm["units"]["total_active_power"] == ["kW", "W"]
    assert pm["scales"]["voltage_l1"][1][0] == 0.1
    line = ch.summary(c)
    assert "+FT-02" in line
    assert "-FT-01" in line
    assert "unit total_active_power kW->W" in line
    assert "~CEMS-01(calibration)" in line
    assert "settings" not in c  # gateway.yaml is the same


def test_a_gateway_yaml_change_names_its_section(tmp_path: Path) -> None:
    old = config(tmp_path, name="a")
    d = tmp_path / "b"
    write_config(d, three_meters(PORTS), store=tmp_path / "gw.db")
    (d / "gateway.yaml").write_text((d / "gateway.yaml").read_text().replace("status_interval_s: 1",
                                                                             "status_interval_s: 5"))
    c = ch.changes(ch.manifest(old), ch.manifest(load_config(d)))
    assert c == {"settings": ["mqtt"]}


_points = st.dictionaries(st.sampled_from(["p", "q", "r", "s"]),
                          st.fixed_dictionaries({"unit": st.sampled_from(["kW", "W"]),
                                                 "device_unit": st.sampled_from(["kW", "W"]),
                                                 "scale": st.sampled_from([None, 1.0, 0.1]),
                                                 "offset": st.sampled_from([None, 0.0]),
                                                 "digest": st.sampled_from(["x", "y"])}))
_inst = st.fixed_dictionaries({"points": _points, "digest": st.sampled_from(["a", "b"]),
                               "calibration": st.sampled_from([None, {"last_date": "2026-01-01"}]),
                               "poll_interval_s": st.sampled_from([1.0, 2.0])})
_manifest = st.fixed_dictionaries({"settings": st.dictionaries(st.sampled_from(["mqtt", "store"]),
                                                               st.sampled_from(["1", "2"])),
                                   "instruments": st.dictionaries(st.sampled_from(["A", "B", "C"]), _inst)})


@settings(max_examples=200, deadline=None)
@given(_manifest, _manifest)
def test_changes_is_empty_exactly_when_the_manifests_are_equal(a: dict, b: dict) -> None:
    c = ch.changes(a, b)
    assert (c == {}) == (a == b)
    assert set(c.get("added", [])) == set(b["instruments"]) - set(a["instruments"])
    assert set(c.get("removed", [])) == set(a["instruments"]) - set(b["instruments"])
    for iid in c.get("changed", {}):
        assert a["instruments"][iid] != b["instruments"][iid]
    assert ch.summary(c)  # always one line of text
    assert "\n" not in ch.summary(c)


def test_the_store_records_each_distinct_configuration_once(tmp_path: Path) -> None:
    a, b = config(tmp_path, name="a"), config(tmp_path, three_meters(PORTS, interval=0.5), name="b")
    store = Store(tmp_path / "gw.db")
    first = store.record_config(a.version, ch.manifest(a), cause="start", now_ms=1_000)
    assert first is not None
    assert first.changes == {"first": 3}
    assert first.previous is None
    assert store.record_config(a.version, ch.manifest(a), cause="start", now_ms=2_000) is None  # a restart
    second = store.record_config(b.version, ch.manifest(b), cause="reload", now_ms=3_000)
    assert second is not None
    assert second.previous == a.version
    assert second.cause == "reload"
    assert set(second.changes["changed"]) == {"PM-01", "FT-01", "CEMS-01"}
    assert second.changes["changed"]["PM-01"]["poll_interval_s"] == [0.2, 0.5]
    store.close()
    with sqlite3.connect(tmp_path / "gw.db") as db:
        got = ch.entries(db)
    assert [(e.version, e.cause, e.started_ms) for e in got] == [(a.version, "start", 1_000),
                                                                 (b.version, "reload", 3_000)]
    with sqlite3.connect(tmp_path / "gw.db") as db:
        (blob,) = db.execute("SELECT manifest FROM config_history ORDER BY id DESC LIMIT 1").fetchone()
    assert blob.startswith("zlib:")  # base64 of zlib-compressed JSON
    assert ch.decode_manifest(blob) == json.loads(json.dumps(ch.manifest(b)))


def test_a_version_6_store_migrates_and_keeps_its_readings(tmp_path: Path) -> None:
    from tests.unit.test_store import reading

    path = tmp_path / "s.db"
    store = Store(path)
    store.commit([reading("A", i) for i in range(3)], now_ms=1, per_message=10)
    store.close()
    with sqlite3.connect(path) as db:  # what a schema-6 store looks like: no config_history
        db.execute("DROP TABLE config_history")
        db.execute("UPDATE meta SET value='6' WHERE key='schema_version'")
        assert ch.entries(db) == []
    store = Store(path)
    assert len(store.pending()) == 1
    assert store.record_config("v1", {"instruments": {}}, cause="start", now_ms=5) is not None
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert [e.version for e in ch.entries(db)] == ["v1"]


def test_config_history_cli_lists_versions_with_their_readings(tmp_path: Path) -> None:
    a = config(tmp_path, name="a")
    store = Store(tmp_path / "gw.db", config_version=a.version)
    store.record_config(a.version, ch.manifest(a), cause="start", now_ms=1_700_000_000_000)
    from tests.unit.test_store import reading

    store.commit([reading("PM-01", i) for i in range(4)], now_ms=1_700_000_000_500, per_message=10)
    b = config(tmp_path, three_meters(PORTS).replace("  - id: FT-01", "  - id: FT-02"), name="b")
    store.record_config(b.version, ch.manifest(b), cause="reload", now_ms=1_700_000_001_000)
    store.close()
    out = subprocess.run([sys.executable, "-m", "gateway", "config", "history", "--store", str(tmp_path / "gw.db")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "version", "since"]
    assert a.version in lines[1]
    assert "start" in lines[1]
    assert " 4 " in lines[1]
    assert "first recorded" in lines[1]
    assert b.version in lines[2]
    assert "reload" in lines[2]
    assert "+FT-02 -FT-01" in lines[2]
    js = subprocess.run([sys.executable, "-m", "gateway", "config", "history", "--store", str(tmp_path / "gw.db"),
                         "--format", "json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    body = json.loads(js.stdout)
    assert [c["version"] for c in body["configurations"]] == [a.version, b.version]
    assert body["configurations"][0]["stored"]["readings"] == 4
    missing = subprocess.run([sys.executable, "-m", "gateway", "config", "history", "--store",
                              str(tmp_path / "none.db")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert missing.returncode == 4
    assert len(missing.stderr.splitlines()) == 1
