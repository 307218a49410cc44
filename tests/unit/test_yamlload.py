"""The configuration reader: YAML 1.2 scalars on libyaml, line numbers, and its limits (issue 7.2)."""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.yamlload import LineDict, LineList, line_of, load_yaml, parse_yaml, read_config_bytes

F = Path("t.yaml")
REPO = Path(__file__).resolve().parents[2]


def test_yaml_1_2_core_schema() -> None:
    """As ruamel.yaml read them before: YAML 1.1's yes/no/on/off booleans and 0-prefixed octals are gone."""
    tree = parse_yaml(
        "a: [yes, no, on, off, y, NO]\nb: [017, 0o17, 0x1f, 1_000, +5, -0]\n"
        "c: [1e3, .5, .inf, -.Inf, .nan, 1.]\nd: [true, False, ~, null, '', 2026-01-10]\n",
        F,
    )
    assert tree["a"] == ["yes", "no", "on", "off", "y", "NO"]
    assert tree["b"] == [17, 15, 31, "1_000", 5, 0]
    c = tree["c"]
    assert c[:2] == [1000.0, 0.5]
    assert c[2] == math.inf
    assert c[3] == -math.inf
    assert math.isnan(c[4])
    assert c[5] == 1.0
    assert tree["d"] == [True, False, None, None, "", dt.date(2026, 1, 10)]


def test_lines_of_keys_and_items() -> None:
    tree = parse_yaml("top:\n  list:\n    - a\n    -\n      k: v\n  other: 1\n", F)
    assert isinstance(tree, LineDict)
    assert isinstance(tree["top"]["list"], LineList)
    assert line_of(tree, ("top",)) == 1
    assert line_of(tree, ("top", "list", 0)) == 3
    assert line_of(tree, ("top", "list", 1, "k")) == 5
    assert line_of(tree, ("top", "other")) == 6
    assert line_of(tree, ("top", "missing", 3)) == 1  # the deepest element found


def test_merge_keys_may_be_overridden_but_own_keys_not_repeated() -> None:
    tree = parse_yaml("base: &b {host: h, port: 1}\nx:\n  <<: *b\n  port: 2\n", F)
    assert tree["x"] == {"host": "h", "port": 2}
    with pytest.raises(ConfigError, match=r"t\.yaml:4: yaml: malformed YAML: duplicate key 'port'"):
        parse_yaml("x:\n  <<: {port: 1}\n  port: 2\n  port: 3\n", F)


def test_alias_expansion_is_bounded_but_ordinary_anchors_pass() -> None:
    doc = "a: &a [1, 2, 3]\n" + "".join(
        f"l{i}: &l{i} [*{'a' if i == 0 else f'l{i - 1}'}, *{'a' if i == 0 else f'l{i - 1}'}]\n" for i in range(30)
    )
    with pytest.raises(ConfigError, match="aliases expand the document to more than 1,000 nodes"):
        parse_yaml(doc, F, max_nodes=1000)
    assert parse_yaml("a: &a [1, 2]\nb: *a\n", F, max_nodes=1000)["b"] == [1, 2]


def test_special_files_are_refused_without_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading would block until a writer came
    with pytest.raises(ConfigError, match="not a regular file \\(a FIFO\\)"):
        read_config_bytes(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(ConfigError, match="a character device"):
        load_yaml(zero)


def test_size_limit(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("a: " + "x" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"5,004 bytes, above the limit of 4,096 \(raise some\.setting\)"):
        load_yaml(f, max_bytes=4096, setting="some.setting")
    assert load_yaml(f, max_bytes=10_000)["a"] == "x" * 5000


@pytest.mark.parametrize(
    ("data", "line", "what"),
    [
        (b"a: 1\nb: caf\xe9\n", 2, "byte 0xe9 is not UTF-8"),
        (b"a: 1\n\nb: \x00\n", 3, "NUL byte"),
        (b"a: 1\nb: \x01\n", 2, "character #x0001 is not allowed"),
    ],
)
def test_bytes_that_are_not_yaml_text(data: bytes, line: int, what: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_yaml(f)
    assert err.value.line == line
    assert what in err.value.message
    assert "\n" not in err.value.one_line()


def test_the_direct_builder_matches_the_generic_constructor() -> None:
    """Documents without anchors are built by plain recursion; it must give what PyYAML's constructor gives."""
    import gateway.yamlload as y

    text = (REPO / "config" / "instruments" / "boiler1.yaml").read_text() + (
        "extra:\n  <<: {a: 1, b: 2}\n  b: 3\n  when: 2026-01-10\n  n: [.nan, 017, yes, ~, !!str 5, {x: [1, [2]]}]\n")

    def shape(t: object) -> object:
        if isinstance(t, LineDict):
            return ("d", t.line, dict(t.key_lines), {k: shape(v) for k, v in t.items()})
        if isinstance(t, LineList):
            return ("l", t.line, list(t.item_lines), [shape(v) for v in t])
        return repr(t)

    loader = y._Loader(text)
    generic = loader.construct_document(loader.get_single_node())
    direct = parse_yaml(text, F)
    assert shape(direct) == shape(generic)
    assert direct["extra"]["b"] == 3
