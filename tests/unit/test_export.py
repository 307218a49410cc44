"""`carbon-gateway export` (issue 12 item 5): a period's readings and derived records with the hash-chain proof,
checked by the shipped standalone script on the exported files alone (CSV and JSON lines), which names an
edited or removed row; a store whose chain is broken is refused."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.cli import main
from gateway.model import Calibration, Derived, Quality, Reading
from gateway.store import Store

T0 = 1_795_488_600_000  # 2026-11-24T02:50:00Z


def fill(path: Path) -> dict[int, str]:
    """Readings of A and B interleaved over 60 s (A's messages between B's in the chain), gap events,
    aggregates, substitutes with traces and a correction; returns the readings chain's links."""
    store = Store(path, config_version="cfg-1")
    for k in range(6):
        batch = [Reading(inst, p, T0 + (k * 10 + i) * 1000, None if (inst, i) == ("A", 3) else k + i / 8,
                         "kg/h", Quality.BAD if (inst, i) == ("A", 3) else Quality.GOOD,
                         "timeout" if (inst, i) == ("A", 3) else "", Calibration.VALID)
                 for inst in ("A", "B") for i in range(10) for p in ("flow", "co2")]
        derived = [Derived("aggregates", inst, "flow", T0 + k * 10_000, {"mean": k + 0.5, "n": 10})
                   for inst in ("A", "B")]
        if k == 2:
            derived += [Derived("events", "A", "flow", T0 + 23_000, {"type": "gap_open", "start_ms": T0 + 23_000}),
                        Derived("substitutes", "A", "flow", T0 + 23_000,
                                {"value": 2.4, "method": "linear", "trace": {"inputs": [[T0 + 22_000, 2.3]]}}),
                        Derived("corrections", "B", "co2", T0 + 24_000, {"value": 1.0, "author": "ops",
                                                                          "reason": "drift"})]
        store.commit(batch, now_ms=T0 + k * 10_000 + 9_999, per_message=8, derived=derived)
    store.close()
    with sqlite3.connect(path) as db:
        return {int(last): bytes(h).hex() for last, h in db.execute(
            "SELECT last_id, hash FROM chain_links WHERE chain = 1")}


def export(path: Path, out: Path, fmt: str, *extra: str) -> int:
    return main(["export", "--store", str(path), "--from", "2026-11-24T02:50:15Z", "--to", "2026-11-24T02:50:34Z",
                 "--format", fmt, "--out", str(out), *extra])


def check(out: Path) -> subprocess.CompletedProcess[str]:
    """The shipped script, run where a recipient would: from the export directory, without the gateway."""
    return subprocess.run([sys.executable, "-I", "verify_export.py"], cwd=out, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_export_of_one_instrument_verifies_without_the_gateway(tmp_path: Path, fmt: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    links = fill(path)
    out = tmp_path / "x"
    assert export(path, out, fmt, "--instrument", "A") == 0
    printed = capsys.readouterr().out
    done = check(out)
    assert done.returncode == 0, done.stdout
    proof = json.loads((out / "proof.json").read_text())
    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "schema" / "export-proof.schema.json"
                         ).read_text())
    Draft202012Validator(schema).validate(proof)
    head = proof["chains"]["readings"]["head"]
    assert links[head["pos"]] == head["hash"]  # the recipient compares it with what the gateway published
    assert f"head {head['pos']} {head['hash']}" in done.stdout
    assert f"readings chain up to {head['pos']} {head['hash']}" in printed
    exported = [json.loads(line) for line in (out / f"readings.{fmt}").open()] if fmt == "jsonl" else \
        list(csv.DictReader((out / f"readings.{fmt}").open()))
    assert {r["instrument"] for r in exported} == {"A"}
    in_period = [r for r in exported if r["in_period"] in (True, "true")]
    assert {int(r["ts_ms"]) for r in in_period} == {T0 + s * 1000 for s in range(15, 35)}
    assert len(in_period) == 40  # A's two points each second of the period, whole messages around them
    # Other instruments' links in between are carried as digests only.
    assert any("digest" in link for link in proof["chains"]["readings"]["links"])
    kinds = {name: sum(1 for _ in (out / name).open()) for name in proof["files"]}
    assert kinds[f"substitutes.{fmt}"] >= 1
    assert kinds[f"events.{fmt}"] >= 1
    subs = (out / f"substitutes.{fmt}").read_text()
    assert "trace" in subs


def test_the_script_names_an_edited_and_a_removed_row(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    fill(path)
    out = tmp_path / "x"
    assert export(path, out, "csv") == 0
    rows = list(csv.reader((out / "readings.csv").open()))
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    rows[5][4] = repr(float(rows[5][4]) + 1) if rows[5][4] else "1.0"
    with (edited / "readings.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    done = check(edited)
    assert done.returncode == 1
    assert "readings: link" in done.stdout
    assert "its rows or its message were changed" in done.stdout
    removed = tmp_path / "removed"
    shutil.copytree(out, removed)
    with (removed / "readings.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows[:7] + rows[8:])
    done = check(removed)
    assert done.returncode == 1
    assert f"row {rows[7][0]} of link" in done.stdout


def test_a_store_with_a_broken_chain_is_not_exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    fill(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE samples SET value = 99 WHERE id = 100")  # inside the period's links
    assert export(path, tmp_path / "x", "csv") == 1
    assert "does not match its stored hash" in capsys.readouterr().err
    assert not (tmp_path / "x" / "proof.json").exists()
