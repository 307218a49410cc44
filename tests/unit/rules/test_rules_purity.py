"""gateway/rules/ stays pure: no I/O, no clock, no logging (docs/rules.md; standard 10.3.1 traceability
rests on the rules being plain functions of their arguments).

Checked on the source (AST), so a forbidden import cannot hide behind a lazy import inside a function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import gateway.rules

RULES_DIR = Path(gateway.rules.__file__).parent
MODULES = sorted(RULES_DIR.glob("*.py"))

# Top-level modules a rules module may import: pure computation and typing only.
ALLOWED_STDLIB = frozenset({
    "__future__", "abc", "bisect", "collections", "dataclasses", "decimal", "enum", "fractions", "functools",
    "hashlib", "heapq", "itertools", "json", "math", "operator", "statistics", "types", "typing",
})
# Parameter models: validation only, no I/O.
ALLOWED_THIRD_PARTY = frozenset({"pydantic", "pydantic_core", "annotated_types"})
# Inside the project: the package itself, the plain record/enum types, the error root and the version.
ALLOWED_GATEWAY = ("gateway.rules", "gateway.model", "gateway.errors")
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "exec", "eval", "compile", "__import__", "breakpoint"})


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: relative import"
            out.append((node.lineno, node.module or ""))
    return out


def _allowed(module: str) -> bool:
    if module == "gateway" or any(module == g or module.startswith(g + ".") for g in ALLOWED_GATEWAY):
        return True
    top = module.split(".", 1)[0]
    return top in ALLOWED_STDLIB or top in ALLOWED_THIRD_PARTY


def test_the_rules_package_has_modules() -> None:
    assert len(MODULES) > 10
    assert not (RULES_DIR / "evaluate.py").exists(), "the auditor tool (file I/O) lives in gateway/audit.py"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_rules_module_imports_nothing_that_does_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [f"{path.name}:{line}: import {module}" for line, module in _imports(tree) if not _allowed(module)]
    assert not bad, "gateway/rules/ must stay free of I/O, clock and logging:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_rules_module_calls_no_io_builtin(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [f"{path.name}:{node.lineno}: {node.func.id}(...)" for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS]
    assert not bad, "gateway/rules/ must not read, write or print:\n" + "\n".join(bad)


IO_PATTERNS = [r"(?<![\w.])open\(", r"\bsys\.std(out|err|in)\b", r"\bpathlib\b", r"\bPath\(", r"\blogging\b",
               r"\bgetLogger\b", r"\bos\.environ\b", r"\btime\.(time|monotonic)\(", r"\bdatetime\.now\("]


@pytest.mark.parametrize("pattern", IO_PATTERNS)
def test_rules_sources_do_not_mention_io(pattern: str) -> None:
    """The plain-text guard beside the AST checks (comments and docstrings included: say it differently)."""
    hits = [f"{p.name}:{n}" for p in MODULES for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(pattern, line)]
    assert not hits, f"{pattern!r} in gateway/rules/: {hits}"


def test_the_allowed_project_modules_are_pure_themselves() -> None:
    """gateway.model and gateway.errors may be imported by the rules, so they obey the same import rule."""
    root = RULES_DIR.parent
    for name in ("model.py", "errors.py"):
        tree = ast.parse((root / name).read_text(encoding="utf-8"))
        bad = [m for _, m in _imports(tree) if not _allowed(m)]
        assert not bad, f"gateway/{name} imports {bad}"
