"""`carbon-gateway correct` checks every input where it enters; the inbox is written so the service can read
it, and ingested so that nothing stops the writer and nothing is stored twice (observations 1 and 2)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.corrections import Inbox, inbox_for, quarantine_for, submit
from gateway.model import Calibration, Quality, Reading
from gateway.registry import Config, load_config
from gateway.store import Store
from tests.helpers import three_meters, write_config

ROOT = Path(__file__).resolve().parents[2]
TS = 1_764_400_000_123  # 2025-11-29T07:06:40.123Z: a stored reading with milliseconds
AT = "2025-11-29T07:06:40.123Z"
NOBODY = 65534


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd or ROOT)


def instruments_with_range(ports: tuple[int, int, int]) -> str:
    return three_meters(ports).replace(
        "    profile: siemens_mag6000\n",
        "    profile: siemens_mag6000\n    measuring_range: {min: 0, max: 500, unit: m3/h}\n")


@pytest.fixture
def site(ports: tuple[int, int, int]) -> Iterator[Path]:
    """A configuration and its store (holding FT-01/volume_flow readings around TS), in a directory the
    service user `nobody` owns when the tests run as root (as under systemd)."""
    top = Path(tempfile.mkdtemp(prefix="cg-correct-"))
    os.chmod(top, 0o755)
    cfg_dir = write_config(top / "cfg", instruments_with_range(ports), store=top / "state" / "gw.db")
    (top / "state").mkdir()
    store = Store(top / "state" / "gw.db")
    store.commit([Reading("FT-01", "volume_flow", TS + d, 100.0 + d, "m3/h", Quality.GOOD, "", Calibration.VALID)
                  for d in (-2000, -1000, 0, 1000, 2000)], now_ms=TS, per_message=10)
    store.close()
    if os.geteuid() == 0:
        for p in [top / "state", *(top / "state").iterdir()]:
            os.chown(p, NOBODY, NOBODY)
    yield cfg_dir
    subprocess.run(["rm", "-rf", str(top)], check=True)


def store_of(cfg_dir: Path) -> Path:
    return cfg_dir.parent / "state" / "gw.db"


def correct(cfg_dir: Path, *extra: str, value: str = "123.4", at: str = AT, cwd: Path | None = None,
            store: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["correct", "--config", str(cfg_dir), "--instrument", "FT-01", "--point", "volume_flow", "--at", at,
            f"--value={value}", "--reason", "display read during audit", "--author", "Li Wei"]
    if store:
        args += ["--store", str(store_of(cfg_dir))]
    return cli(*args, *extra, cwd=cwd)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_a_value_that_is_not_finite_is_refused(site: Path, value: str) -> None:
    """Observation 1: a nan correction was accepted and killed the running gateway on every start."""
    out = correct(site, value=value)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("<config>: --value: must be a finite number")
    assert not inbox_for(store_of(site)).exists()


def test_a_value_outside_the_measuring_range_needs_force_and_is_recorded_as_forced(site: Path) -> None:
    out = correct(site, value="900")
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert "900 m3/h is outside the measuring range of FT-01/volume_flow [0, 500] m3/h; add --force" in line
    out = correct(site, "--force", value="900")
    assert out.returncode == 0, out.stderr
    (queued,) = inbox_for(store_of(site)).glob("*.json")
    body = json.loads(queued.read_text())
    assert (body["value"], body["forced"]) == (900.0, True)
    ok = correct(site, "--force", value="400")  # inside the range: --force changes nothing
    assert ok.returncode == 0
    assert sorted(json.loads(p.read_text())["forced"] for p in inbox_for(store_of(site)).glob("*.json")) == [
        False, True]


def test_at_must_match_a_stored_reading_and_the_nearest_are_listed(site: Path) -> None:
    """`--at` with whole seconds silently superseded nothing: now it is refused with what is stored."""
    out = correct(site, at="2025-11-29T15:06:40+08:00")
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line == ("<config>: --at: no stored reading of FT-01/volume_flow at 2025-11-29T15:06:40.000+08:00; "
                    "nearest stored: 2025-11-29T15:06:38.123+08:00, 2025-11-29T15:06:39.123+08:00, "
                    "2025-11-29T15:06:40.123+08:00, 2025-11-29T15:06:41.123+08:00, 2025-11-29T15:06:42.123+08:00")
    out = correct(site, at="2025-11-29T15:06:40.123+08:00")
    assert out.returncode == 0, out.stderr
    (queued,) = inbox_for(store_of(site)).glob("*.json")
    assert json.loads(queued.read_text())["ts"] == TS


def test_a_time_in_the_future_is_refused(site: Path) -> None:
    out = correct(site, at="2099-01-01T00:00:00Z")
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("<config>: --at: 2099-01-01T00:00:00Z is in the future (now ")


def test_without_store_it_uses_the_configured_store_and_never_queues_under_the_working_directory(
        site: Path, tmp_path: Path) -> None:
    out = correct(site, store=False, cwd=tmp_path)  # store.path in the config is absolute: found
    assert out.returncode == 0, out.stderr
    assert len(list(inbox_for(store_of(site)).glob("*.json"))) == 1
    relative = site.parent / "cfg-relative"
    write_config(relative, (site / "instruments" / "plant.yaml").read_text(), store=Path("var/gw.db"))
    out = correct(relative, store=False, cwd=tmp_path)
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("<config>: --store: no store at var/gw.db (store.path of the configuration")
    assert not (tmp_path / "var").exists()  # nothing created under the working directory


def test_the_inbox_file_is_readable_by_the_service_user(site: Path) -> None:
    out = correct(site)
    assert out.returncode == 0, out.stderr
    inbox = inbox_for(store_of(site))
    (queued,) = inbox.glob("*.json")
    assert queued.stat().st_mode & 0o777 == 0o644
    assert not list(inbox.glob(".*"))  # no temporary file left behind
    owner = store_of(site).parent.stat().st_uid
    assert queued.stat().st_uid == owner  # chowned when run as root
    assert inbox.stat().st_uid == owner  # the service can remove the files it stored


# -- ingestion by the running gateway, as the service user --------------------------------------------------


def as_service_user(fn: Callable[[], Any]) -> Any:
    """Run fn as the service user: in a forked child as `nobody` when the tests run as root (root reads
    everything), else here (the test user is then the unprivileged service user). Returns fn's result."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result: tuple[str, Any] = ("ok", fn())
        except BaseException as err:  # everything goes back to the parent
            result = ("error", f"{type(err).__name__}: {err}")
        with os.fdopen(w, "wb") as f:
            pickle.dump(result, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    status, value = pickle.loads(data)
    assert status == "ok", value
    return value


def make_foreign(path: Path, mode: int) -> None:
    """What a correction queued by root with the old `correct` looked like to the service user."""
    if os.geteuid() == 0:
        os.chown(path, 0, 0)
        os.chmod(path, mode)
    else:
        os.chmod(path, mode & 0o555 if path.is_dir() else 0)


def one_start(cfg: Config, store_path: Path) -> tuple[int, list[str]]:
    """What one gateway start does with the inbox (the writer's calls), then stops: (records stored, log)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(f"{record.levelname} {record.getMessage()}")  # type: ignore[method-assign]
    logger = logging.getLogger("gateway.corrections")
    logger.addHandler(handler)
    try:
        store = Store(store_path)
        try:
            inbox = Inbox(inbox_for(store_path), cfg)
            for _ in range(2):  # two writer turns: a stuck file is logged once per start
                got = inbox.collect(store, TS + 10_000)
                store.commit([], now_ms=TS + 10_000, per_message=10, derived=got.records, ingested=got.hashes)
                inbox.remove(got.files)
        finally:
            store.close()
    finally:
        logger.removeHandler(handler)
    with sqlite3.connect(store_path) as db:
        stored = db.execute("SELECT COUNT(*) FROM records WHERE kind = 'corrections'").fetchone()[0]
    return int(stored), lines


def test_a_correction_queued_by_root_is_stored_once_over_three_starts_even_if_it_cannot_be_removed(
        site: Path) -> None:
    """Observation 2: PermissionError on every start and the same correction stored again on each start."""
    store_path = store_of(site)
    cfg = load_config(site)
    assert correct(site).returncode == 0
    inbox = inbox_for(store_path)
    make_foreign(inbox, 0o755)  # an inbox the service cannot write: the file can never be removed
    results = [as_service_user(lambda: one_start(cfg, store_path)) for _ in range(3)]
    assert [n for n, _ in results] == [1, 1, 1]  # stored once, not once per start
    first_log = results[0][1]
    assert [line.split(" ", 1)[0] for line in first_log] == ["WARNING"]
    assert "stored, but the file cannot be removed" in first_log[0]
    for _, later in results[1:]:
        (line,) = later  # once per start, not once per writer turn
        assert "already stored (same content, sha256 " in line
        assert "but the file cannot be removed (Permission denied); it will not be stored again" in line


def test_an_unreadable_or_broken_inbox_file_is_quarantined_with_one_line_and_never_stops_the_writer(
        site: Path) -> None:
    store_path = store_of(site)
    cfg = load_config(site)
    inbox = inbox_for(store_path)
    inbox.mkdir()
    good = {"instrument": "FT-01", "point": "volume_flow", "ts": TS, "value": 1.5, "unit": "m3/h",
            "reason": "r", "author": "a", "created": TS, "id": "x1"}
    (inbox / "1-nan.json").write_text(json.dumps({**good, "value": float("nan"), "id": "x2"}))  # old `correct`
    (inbox / "2-garbage.json").write_bytes(b"\xff\x00not json")
    (inbox / "3-good.json").write_text(json.dumps(good))
    (inbox / "4-same-bytes.json").write_text(json.dumps(good))  # a copy: stored once
    (inbox / "5-unreadable.json").write_text(json.dumps({**good, "id": "x3"}))
    os.mkfifo(inbox / "6-fifo.json")  # would block a plain read forever
    if os.geteuid() == 0:
        for p in [inbox, *inbox.iterdir()]:
            os.chown(p, NOBODY, NOBODY)
    make_foreign(inbox / "5-unreadable.json", 0o600)
    stored, lines = as_service_user(lambda: one_start(cfg, store_path))
    assert stored == 1
    quarantined = sorted(p.name for p in quarantine_for(inbox).iterdir())
    assert quarantined == ["1-nan.json", "2-garbage.json", "5-unreadable.json", "6-fifo.json"]
    assert not list(inbox.iterdir())
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 4  # one line per quarantined file
    assert any("1-nan.json: not a usable correction (NaN is not a number)" in e for e in errors)
    assert any("5-unreadable.json: not a usable correction (cannot read it: Permission denied)" in e
               for e in errors)
    assert any("6-fifo.json: not a usable correction (not a regular file)" in e for e in errors)
    with sqlite3.connect(store_path) as db:
        (body,) = db.execute("SELECT body FROM records WHERE kind = 'corrections'").fetchone()
    record = json.loads(body)
    assert (record["value"], record["forced"], record["supersedes_reading_id"]) == (1.5, False, 3)


def test_submit_in_process_refuses_nan_without_touching_the_inbox(site: Path) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="--value: must be a finite number"):
        submit(load_config(site), store_of(site), instrument="FT-01", point="volume_flow", at=AT,
               value=float("nan"), reason="r", author="a")
    assert not inbox_for(store_of(site)).exists()
