"""YAML loading that remembers where every value came from, so errors can say file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from gateway.errors import ConfigError


def load_yaml(path: Path) -> Any:
    """Parse one YAML file into ruamel's commented containers (they carry line numbers)."""
    yaml = YAML(typ="rt")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read file: {err.strerror}", file=str(path)) from None
    try:
        return yaml.load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "malformed YAML"
        raise ConfigError(f"malformed YAML: {problem}", file=str(path), line=line, field="yaml") from None
    except Exception as err:  # noqa: BLE001 - ruamel raises several unrelated types for bad input
        raise ConfigError(f"malformed YAML: {err}", file=str(path), field="yaml") from None


def line_of(node: Any, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest element of `loc` found in the parsed tree."""
    line: int | None = _node_line(node)
    current = node
    for key in loc:
        if isinstance(current, CommentedMap) and key in current:
            try:
                line = current.lc.key(key)[0] + 1
            except (KeyError, TypeError):
                pass
            current = current[key]
        elif isinstance(current, CommentedSeq) and isinstance(key, int) and 0 <= key < len(current):
            try:
                line = current.lc.item(key)[0] + 1
            except (KeyError, TypeError):
                pass
            current = current[key]
        else:
            break
        sub = _node_line(current)
        if sub is not None and line is None:
            line = sub
    return line


def _node_line(node: Any) -> int | None:
    lc = getattr(node, "lc", None)
    if lc is None or lc.line is None:
        return None
    return int(lc.line) + 1


def to_plain(node: Any) -> Any:
    """Commented containers -> plain dicts/lists (what pydantic validates)."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    return node
