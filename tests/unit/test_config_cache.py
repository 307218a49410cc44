"""The parse cache beside the store (issue 8.5): same configuration cold and cached, never stale,
never trusted when someone else could have written it, and errors are always found by parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.startup import write_config as write_plant
from gateway.errors import ConfigErrors
from gateway.registry import load_config
from gateway.yamlload import LineDict, ParseCache, load_yaml


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.pickle"))


def test_a_plant_configuration_is_the_same_cold_and_cached(tmp_path: Path) -> None:
    store = write_plant(tmp_path / "cfg", 300)
    cache = store.parent / "config-cache"
    cold = load_config(tmp_path / "cfg")
    assert len(entries(cache)) == 3  # one per instrument file
    cached = load_config(tmp_path / "cfg")
    assert cached.instruments == cold.instruments
    assert cached.version == cold.version
    assert [s.points[3].source_line for s in cached.instruments[:5]] == [s.points[3].source_line
                                                                         for s in cold.instruments[:5]]
    assert len(cold.instruments) == 300


def test_a_changed_file_is_parsed_again_and_its_old_entry_pruned(tmp_path: Path) -> None:
    store = write_plant(tmp_path / "cfg", 150)
    cache = store.parent / "config-cache"
    load_config(tmp_path / "cfg")
    before = entries(cache)
    f = tmp_path / "cfg" / "instruments" / "meters_001.yaml"
    f.write_text(f.read_text().replace("poll_interval_s: 1", "poll_interval_s: 2", 1))
    cfg = load_config(tmp_path / "cfg")
    assert cfg.instrument("m00100").poll_interval_s == 2
    after = entries(cache)
    assert len(after) == 2
    assert len(set(after) - set(before)) == 1  # the changed file's new entry; its old one is gone
    f.write_text(f.read_text().replace("poll_interval_s: 2", "poll_interval_s: 0", 1))
    with pytest.raises(ConfigErrors, match=r"poll_interval_s: Input should be greater than or equal to 0\.05"):
        load_config(tmp_path / "cfg")  # a cached parse never hides a schema error


def test_an_entry_writable_by_others_is_not_trusted(tmp_path: Path) -> None:
    cache = ParseCache(tmp_path / "cache")
    f = tmp_path / "a.yaml"
    f.write_text("a: 1\n")
    tree = load_yaml(f, cache=cache)
    assert isinstance(tree, LineDict)
    [entry] = entries(tmp_path / "cache")
    # Someone who can write the entry could make it run code when loaded: such an entry is ignored.
    entry.write_bytes(b"cos\nsystem\n(S'echo pwned > " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    entry.chmod(0o666)
    assert load_yaml(f, cache=ParseCache(tmp_path / "cache")) == {"a": 1}
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "cache").chmod(0o777)
    entry.chmod(0o600)
    assert load_yaml(f, cache=ParseCache(tmp_path / "cache")) == {"a": 1}
    assert not (tmp_path / "pwned").exists()


def test_a_corrupt_entry_is_parsed_again(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("a: [1, 2]\n")
    load_yaml(f, cache=ParseCache(tmp_path / "cache"))
    [entry] = entries(tmp_path / "cache")
    entry.write_bytes(b"\x80\x05garbage")
    tree = load_yaml(f, cache=ParseCache(tmp_path / "cache"))
    assert tree == {"a": [1, 2]}
    assert tree["a"].item_lines == [1, 1]


def test_no_cache_when_turned_off_or_the_store_directory_does_not_exist(tmp_path: Path) -> None:
    store = write_plant(tmp_path / "cfg", 10)
    text = (tmp_path / "cfg" / "gateway.yaml").read_text()
    off = text.replace('store: {path: "', 'store: {config_cache: false, path: "')
    (tmp_path / "cfg" / "gateway.yaml").write_text(off)
    load_config(tmp_path / "cfg")
    assert not (store.parent / "config-cache").exists()
    (tmp_path / "cfg" / "gateway.yaml").write_text(text.replace(str(store), str(tmp_path / "new" / "gw.db")))
    load_config(tmp_path / "cfg")
    assert not (tmp_path / "new").exists()  # validate never creates the store's directory
    assert os.listdir(store.parent) == []


def test_no_cache_in_a_store_directory_of_another_user(tmp_path: Path) -> None:
    """`validate` run by an admin in the service's store directory leaves no cache the service cannot use."""
    f = tmp_path / "a.yaml"
    f.write_text("a: 1\n")
    store_dir = tmp_path / "data"
    store_dir.mkdir()
    if os.geteuid() == 0:  # only root can hand the directory to another user (the case this is about)
        os.chown(store_dir, 65534, -1)
        assert load_yaml(f, cache=ParseCache(store_dir / "config-cache")) == {"a": 1}
        assert not (store_dir / "config-cache").exists()
        os.chown(store_dir, 0, -1)
    assert load_yaml(f, cache=ParseCache(store_dir / "config-cache")) == {"a": 1}
    assert len(entries(store_dir / "config-cache")) == 1
