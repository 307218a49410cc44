"""The hash chain (issue 11 item 1): what the store chains is what an independent script recomputes from
docs/hash-chain.md, `verify` is ok on an untouched store and names an edited, a deleted and an inserted row
(tampered with the `sqlite3` shell), and retention and the schema 6 -> 7 migration keep it verifiable."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import chain
from gateway.chain_verify import verify
from gateway.cli import main
from gateway.model import Calibration, Derived, Quality, Reading
from gateway.store import Store
from gateway.store_schema import _READINGS_INSERT, _READINGS_VIEW_V5, SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import chain_check  # noqa: E402  (the standalone recomputation a third party would run)

T0 = 1_795_488_600_000
SQLITE3 = shutil.which("sqlite3")
needs_shell = pytest.mark.skipif(SQLITE3 is None, reason="the sqlite3 shell is installed by `make system-tools`")


def readings(instrument: str, n: int, *, start: int = 0) -> list[Reading]:
    return [Reading(instrument, f"p{i % 3}", T0 + i * 1000, float(i) / 4, "kg/h", Quality.GOOD, "",
                    Calibration.VALID) for i in range(start, start + n)]


def fill(path: Path) -> Store:
    store = Store(path, config_version="cfg-1")
    store.commit(readings("A", 10) + readings("B", 5), now_ms=T0 + 10_000, per_message=4,
                 derived=[Derived("events", "A", "p0", T0, {"type": "gap_open", "start_ms": T0})])
    store.commit(readings("A", 6, start=10), now_ms=T0 + 20_000, per_message=4,
                 derived=[Derived("aggregates", "B", "p1", T0, {"mean": 1.5, "n": 4})])
    return store


def verify_line(path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["verify", "--store", str(path), *args])
    return code, capsys.readouterr().out


def shell(path: Path, sql: str) -> None:
    assert SQLITE3 is not None
    subprocess.run([SQLITE3, str(path), sql], check=True, capture_output=True)


# -- the documented encoding, by an independent implementation --------------------------------------------

# docs/hash-chain.md "Worked example": these inputs give these hashes.
EXAMPLE_EPOCH = "0123456789abcdef0123456789abcdef"


def example() -> tuple[bytes, bytes, bytes]:
    g = chain_check.genesis(EXAMPLE_EPOCH, "readings")
    rows = chain_check.readings_rows([("CEMS-01", "so2", "mg/m3", 0, 0, "", 1795488600000, 35.2),
                                      ("CEMS-01", "so2", "mg/m3", 2, 0, "timeout", 1795488601000, None)])
    header = chain_check.readings_header("CEMS-01", 1, 1795488601250, "885f257d90673fa4", 2)
    return g, header + rows, chain_check.link_hash(g, header, [rows])


def test_worked_example_in_the_document_is_what_both_implementations_compute() -> None:
    g, encoded, h = example()
    doc = (ROOT / "docs" / "hash-chain.md").read_text()
    assert g.hex() in doc
    block = doc.split("Header and rows (157 bytes):")[1].split("digest = SHA-256")[0]
    assert "".join(line.split()[0] for line in block.splitlines() if line.strip()) == encoded.hex()
    assert h.hex() in doc
    rows = chain.readings_rows([chain.reading_prefix("CEMS-01", "so2", "mg/m3", "good", "valid", ""),
                                chain.reading_prefix("CEMS-01", "so2", "mg/m3", "bad", "valid", "timeout")],
                               [1795488600000, 1795488601000], [35.2, chain.canonical_value(None)])
    header = chain.readings_header("CEMS-01", 1, 1795488601250, "885f257d90673fa4", 2)
    assert chain.genesis(EXAMPLE_EPOCH, "readings") == g
    assert header + rows == encoded
    assert chain.link_hash(g, header, [rows]) == h


def test_the_store_chains_what_the_standalone_script_recomputes(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = fill(path)
    heads = store.chain_heads()
    store.close()
    store = Store(path, config_version="cfg-2")  # the head survives a restart and the chain goes on
    assert store.chain_heads() == heads
    store.commit(readings("C", 3), now_ms=T0 + 30_000, per_message=4,
                 derived=[Derived("corrections", "C", "p0", T0, {"value": 2.0, "author": "ops"})])
    heads = store.chain_heads()
    store.close()
    assert chain_check.check_store(str(path)) == [f"{name} {h['pos']} {h['hash']}" for name, h in heads.items()]
    assert heads["readings"]["pos"] == 24
    assert heads["records"]["pos"] == 3


@needs_shell
def test_configuration_changes_are_chained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    store = fill(path)
    store.record_config("cfg-1", {"instruments": {"A": {"poll_interval_s": 1}}}, cause="start", now_ms=T0)
    store.record_config("cfg-2", {"instruments": {"A": {"poll_interval_s": 2}}}, cause="reload", now_ms=T0 + 1)
    heads = store.chain_heads()
    store.close()
    assert heads["config"]["pos"] == 2
    assert chain_check.check_store(str(path))[2] == f"config 2 {heads['config']['hash']}"
    code, out = verify_line(path, capsys)
    assert code == 0, out
    assert "config chain: 2 links, 2 rows ok" in out
    shell(path, "UPDATE config_history SET changes = '[]' WHERE id = 2")
    code, out = verify_line(path, capsys)
    assert code == 1
    assert "config chain: config_history id 2: edited" in out


def test_each_message_carries_its_link_live_and_from_the_backlog(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = fill(path)
    live = {(o.instrument, o.kind, o.seq): (o.chain_pos, o.chain_hash) for o in store.begin(100)}
    store.close()
    store = Store(path)
    backlog = {(o.instrument, o.kind, o.seq): (o.chain_pos, o.chain_hash) for o in store.begin(100)}
    replayed = {(o.instrument, o.kind, o.seq): (o.chain_pos, o.chain_hash)
                for o in store.stream_messages("A", "readings", after_seq=0, up_to_seq=10)}
    store.close()
    assert replayed == {k: v for k, v in live.items() if k[:2] == ("A", "readings")}
    assert backlog == live
    assert len(live) == 9
    with sqlite3.connect(path) as db:
        links = {(int(last), bytes(h)) for last, h in db.execute("SELECT last_id, hash FROM chain_links")}
        view = db.execute("SELECT id, hash FROM readings ORDER BY id").fetchall()
        ends = sorted((int(last), bytes(h).hex()) for last, h in db.execute(
            "SELECT last_id, hash FROM chain_links WHERE chain = 1"))
    assert set(live.values()) == links
    assert all(h == next(lh for last, lh in ends if last >= rid) for rid, h in view)  # the `hash` column


# -- verify -------------------------------------------------------------------------------------------------


def test_verify_is_ok_on_an_untouched_store_and_for_a_time_range(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    fill(path).close()
    code, out = verify_line(path, capsys)
    assert code == 0, out
    assert "readings chain: 7 links, 21 rows ok" in out
    assert out.rstrip().endswith("ok")
    code, out = verify_line(path, capsys, "--from", "2026-11-24T02:50:03Z", "--to", "2026-11-24T02:50:05Z")
    assert code == 0, out


@needs_shell
@pytest.mark.parametrize(("sql", "expected"), [
    ("UPDATE samples SET value = 99.5 WHERE id = 6",
     "readings chain: samples id 6: edited: A p2 at 2026-11-24T02:50:05.000Z, value 99.5"),
    ("DELETE FROM samples WHERE id = 7", "readings chain: samples id 7: deleted: the row is missing from its chain "
                                         "link (message A/readings seq 2, rows 5..8: 4 rows chained, 3 left)"),
    ("INSERT INTO readings (instrument, point, ts_ms, value, unit, quality, reason, calibration) VALUES "
     "('A', 'p0', 1795488605000, 1.0, 'kg/h', 'good', '', 'valid')",
     "readings chain: samples id 22: inserted: A p0 at 2026-11-24T02:50:05.000Z, value 1.0: no chain link covers it"),
    ("UPDATE records SET body = '{\"mean\":1.0,\"n\":4}' WHERE kind = 'aggregates'",
     "records chain: records id 2: edited: aggregates of B p1"),
    ("UPDATE messages SET created_ms = created_ms + 1 WHERE id = 1",
     "readings chain: chain_links id 1: link: link 1..4 (message A/readings seq 1, rows 1..4): hash differs"),
    ("UPDATE samples SET code = code | 2 WHERE id = 3", "readings chain: samples id 3: edited"),
    # schema 10: a later row stores its time as an offset from the message's ts_base; either edit shifts it
    ("UPDATE samples SET ts_ms = ts_ms + 1 WHERE id = 6", "readings chain: samples id 6: edited: A p2 at "
                                                          "2026-11-24T02:50:05.001Z"),
    ("UPDATE messages SET ts_base = ts_base + 1000 WHERE id = 2", "readings chain: samples id 6: edited: A p2 at "
                                                                  "2026-11-24T02:50:06.000Z"),
], ids=["edited", "deleted", "inserted", "record-edited", "message-edited", "quality-edited", "time-edited",
        "ts-base-edited"])
def test_verify_names_the_row_tampered_with_the_sqlite3_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              sql: str, expected: str) -> None:
    path = tmp_path / "s.db"
    fill(path).close()
    shell(path, sql)
    code, out = verify_line(path, capsys)
    assert code == 1
    assert expected in out, out
    assert "BROKEN" in out
    assert len(out.splitlines()) == 1


@needs_shell
def test_a_gateway_restarted_after_tampering_keeps_the_evidence(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    fill(path).close()
    shell(path, "DELETE FROM samples WHERE id = 21")  # the newest row: its id is not given out again
    store = Store(path)
    store.commit(readings("A", 2, start=50), now_ms=T0 + 40_000, per_message=4)
    store.close()
    code, out = verify_line(path, capsys)
    assert code == 1
    assert "samples id 21: deleted" in out


# -- retention and migration --------------------------------------------------------------------------------


def test_retention_keeps_the_retained_part_verifiable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    store = Store(path, synchronous="normal")
    for k in range(6):
        store.commit(readings("A", 500, start=k * 500), now_ms=T0 + k, per_message=50,
                     derived=[Derived("aggregates", "A", "p0", T0 + k, {"k": k})])
    store.ack([o.id for o in store.begin(40)])
    store.flush()
    assert store.prune_delivered(older_than_ms=T0 + 2) == 1000  # the first two commits
    assert store.prune_to_size(store.used_bytes() // 2) > 0
    store.commit(readings("A", 10, start=9000), now_ms=T0 + 9, per_message=50)
    store.close()
    with sqlite3.connect(path) as db:
        start, last, _ = db.execute("SELECT value FROM meta WHERE key = 'chain:readings'").fetchone()[0].split()
        assert int(start) == 1
        assert int(last) >= 1000
        assert db.execute("SELECT MIN(id) FROM samples").fetchone()[0] == int(last) + 1
        assert db.execute("SELECT value FROM meta WHERE key = 'chain:records'").fetchone()[0].split()[1] == "2"
    code, out = verify_line(path, capsys)
    assert code == 0, out
    assert "checked from the retained part" in out
    if SQLITE3:
        shell(path, "INSERT INTO readings (id, instrument, point, ts_ms, value, unit, quality, reason, calibration) "
                    "VALUES (5, 'A', 'p0', 1795488605000, 1.0, 'kg/h', 'good', '', 'valid')")
        code, out = verify_line(path, capsys)
        assert code == 1
        assert "samples id 5: inserted" in out, out
        assert "retention pruned" in out


def test_a_schema_6_store_migrates_and_the_chain_starts_after_its_rows(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.db"
    fill(path).close()
    with sqlite3.connect(path) as db:  # back to schema 6: no chain
        db.execute("DROP VIEW readings")  # the view of schema 6, whose `hash` was NULL
        db.execute(_READINGS_VIEW_V5)
        db.execute(_READINGS_INSERT)
        db.execute("DROP TABLE chain_links")
        db.execute("DROP TABLE IF EXISTS config_history")
        db.execute("DELETE FROM meta WHERE key LIKE 'chain:%'")
        db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
        before = db.execute("SELECT * FROM readings ORDER BY id").fetchall()
    store = Store(path)
    assert len(store.pending(limit=100)) == 9  # undelivered messages survive
    pending = store.begin(100)
    assert {o.chain_pos for o in pending} == {0}  # messages from before the chain carry no link
    store.commit(readings("A", 4, start=100), now_ms=T0 + 50_000, per_message=4)
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert db.execute("SELECT * FROM readings WHERE id <= 21 ORDER BY id").fetchall() == before
        assert db.execute("SELECT value FROM meta WHERE key = 'chain:readings'").fetchone()[0].split()[:2] == \
            ["22", "21"]
    with sqlite3.connect(path) as db:  # the view's hash: the covering link's, NULL before the chain
        hashes = dict(db.execute("SELECT id, hash FROM readings").fetchall())
        link = bytes(db.execute("SELECT hash FROM chain_links WHERE chain = 1").fetchone()[0]).hex()
    assert {hashes[i] for i in range(1, 22)} == {None}
    assert {hashes[i] for i in range(22, 26)} == {link}
    code, out = verify_line(path, capsys)
    assert code == 0, out
    assert "readings chain: 1 links, 4 rows ok" in out
    assert "21 rows stored before the chain started" in out


# -- any readings: what is committed verifies, and the standalone script agrees ----------------------------

values = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.just(-0.0))
names = st.text(min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["A", "B", "炉-1"]), names, values, st.sampled_from(list(Quality)),
                          st.sampled_from(list(Calibration)), st.sampled_from(["", "timeout", "nan"])),
                min_size=1, max_size=30))
def test_any_committed_readings_verify(tmp_path_factory: pytest.TempPathFactory,
                                       items: list[tuple[str, str, float | None, Quality, Calibration, str]]) -> None:
    path = tmp_path_factory.mktemp("h") / "s.db"
    store = Store(path, synchronous="normal", config_version="c")
    batch = [Reading(i, p, T0 + k, v, "m3/h", q, r, c) for k, (i, p, v, q, c, r) in enumerate(items)]
    store.commit(batch, now_ms=T0, per_message=7)
    heads = store.chain_heads()
    store.close()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        result = verify(db)
    finally:
        db.close()
    assert result.problem is None, result.problem
    assert chain_check.check_store(str(path))[0] == f"readings {heads['readings']['pos']} {heads['readings']['hash']}"


def test_a_re_chained_store_is_caught_by_a_published_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Someone who edits a row and recomputes every hash after it leaves a self-consistent store: only a hash
    the gateway published before (a message's `chain`, a status head) shows it, through `verify --expect`."""
    from gateway.chain_verify import _Readings
    from gateway.store import read_anchor

    path = tmp_path / "s.db"
    store = fill(path)
    published = store.chain_heads()["readings"]
    store.close()
    expect = f"readings:{published['pos']}:{published['hash']}"
    code, out = verify_line(path, capsys, "--expect", expect)
    assert code == 0, out
    assert f"the published hash at {published['pos']} is the store's" in out
    with sqlite3.connect(path) as db:  # the attack: edit, then re-chain from the edit on
        db.execute("UPDATE samples SET value = 99.5 WHERE id = 6")
        w = _Readings(db)
        anchor = read_anchor(db, "readings")
        assert anchor is not None
        prev = anchor.hash
        for first, last in db.execute("SELECT first_id, last_id FROM chain_links WHERE chain = 1 ORDER BY first_id"
                                      ).fetchall():
            rows = list(w.rows(first, last))
            head = w.header(first, last, len(rows))
            assert head is not None
            prev = chain.link_hash(prev, head[0], [w.block(rows)])
            db.execute("UPDATE chain_links SET hash = ? WHERE chain = 1 AND first_id = ?", (prev, first))
    code, out = verify_line(path, capsys)
    assert code == 0, out  # consistent with itself
    code, out = verify_line(path, capsys, "--expect", expect)
    assert code == 1
    assert "the data was changed and re-chained after it was published" in out
    code, out = verify_line(path, capsys, "--expect", "readings:5:" + "0" * 64)
    assert code == 1
    assert "no link ends at 5" in out
