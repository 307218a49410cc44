"""Fuzzing the corrections inbox: whatever bytes a file holds, ingestion never raises and never stores twice."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.corrections import Inbox, inbox_for, parse_correction, quarantine_for
from gateway.registry import Config, load_config
from gateway.store import Store
from tests.helpers import three_meters, write_config

NOW = 1_764_400_000_000
GOOD: dict[str, Any] = {"instrument": "FT-01", "point": "volume_flow", "ts": NOW - 1000, "value": 12.5,
                        "unit": "m3/h", "reason": "audit", "author": "Li Wei", "created": NOW, "id": "abc"}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    return load_config(write_config(tmp_path_factory.mktemp("cfg"), three_meters((1502, 1503, 1504))))


def json_values() -> st.SearchStrategy[Any]:
    surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**1030), st.floats(),
                        st.text(max_size=20), surrogates)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=8), inner, max_size=3), max_leaves=8)


def mutated_corrections() -> st.SearchStrategy[bytes]:
    """Valid corrections with one field replaced, dropped or added: close to what could really arrive."""
    def build(key: str, value: Any, drop: bool) -> bytes:
        body = dict(GOOD)
        if drop:
            body.pop(key, None)
        else:
            body[key] = value
        return json.dumps(body).encode()  # NaN and Infinity as Python writes them

    return st.builds(build, st.sampled_from([*GOOD, "forced", "extra"]), json_values(), st.booleans())


def file_contents() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated_corrections(), st.just(json.dumps(GOOD).encode()),
                     st.text(max_size=100).map(str.encode))


def stored_corrections(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM records WHERE kind = 'corrections'")]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(file_contents(), min_size=1, max_size=4), starts=st.integers(1, 3))
def test_arbitrary_inbox_files_never_crash_ingestion_and_are_never_stored_twice(
        cfg: Config, files: list[bytes], starts: int) -> None:
    top = Path(tempfile.mkdtemp(prefix="cg-fuzz-"))
    try:
        store_path = top / "gw.db"
        inbox_dir = inbox_for(store_path)
        inbox_dir.mkdir()
        for i, data in enumerate(files):
            (inbox_dir / f"{i}.json").write_bytes(data)
        # What the gateway may store: each distinct content that parses, once.
        expected = set()
        for data in files:
            try:
                parse_correction(data, cfg)
            except ValueError:
                continue
            expected.add(data)
        for _ in range(starts):  # the gateway restarted, the files possibly copied back in meanwhile
            store = Store(store_path, synchronous="normal")
            try:
                inbox = Inbox(inbox_dir, cfg)
                got = inbox.collect(store, NOW)
                store.commit([], now_ms=NOW, per_message=10, derived=got.records, ingested=got.hashes)
                inbox.remove(got.files)
                assert not list(inbox_dir.glob("*.json"))  # every file stored or quarantined
                again = inbox.collect(store, NOW)
                assert again.records == []
            finally:
                store.close()
            for i, data in enumerate(files):
                (inbox_dir / f"{i}.json").write_bytes(data)
        stored = stored_corrections(store_path)
        assert len(stored) == len(expected)
        for body in stored:
            assert math.isfinite(body["value"])
            json.dumps(body, ensure_ascii=False, allow_nan=False).encode()  # publishable as the encoder does
            assert body["instrument"] == "FT-01"
        quarantined = list(quarantine_for(inbox_dir).iterdir()) if quarantine_for(inbox_dir).exists() else []
        assert len(quarantined) == starts * (len(files) - sum(1 for d in files if d in expected))
    finally:
        shutil.rmtree(top)


def test_json_nan_and_infinity_are_refused(cfg: Config) -> None:
    for token in ("NaN", "Infinity", "-Infinity"):
        data = json.dumps(GOOD).replace('"value": 12.5', f'"value": {token}').encode()
        with pytest.raises(ValueError, match="is not a number"):
            parse_correction(data, cfg)
    with pytest.raises(ValueError, match="value: missing or not a finite number"):
        parse_correction(json.dumps({**GOOD, "value": 1e400}).replace("Infinity", "1e400").encode(), cfg)
    with pytest.raises(ValueError, match="value: missing or not a finite number"):
        parse_correction(json.dumps({**GOOD, "value": 10**400}).encode(), cfg)
    with pytest.raises(ValueError, match="reason: not valid Unicode text"):
        parse_correction(json.dumps({**GOOD, "reason": "\udcff"}).encode(), cfg)
    assert parse_correction(json.dumps(GOOD).encode(), cfg)["value"] == 12.5
