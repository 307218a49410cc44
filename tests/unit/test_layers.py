"""Import direction, pinned (docs/architecture.md "Direction rules").

- drivers/ never imports the gateway modules downstream of a driver (tagging, store, forwarder, rules,
  app, registry ...): only the neutral core modules below; a protocol package never imports another.
- the gateway core imports no protocol package: it learns the protocols from gateway/protocols.py,
  whose plugin list is the one place that names them (as module names, imported by the registry).
- the rules package imports nothing of drivers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gateway.protocols import BUILTIN, PROTOCOLS

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"gateway", "drivers", "simulators", "tests", "bench"}

# What drivers may use of the core: value types, errors, the neutral config building blocks, units.
DRIVERS_MAY_IMPORT = {"gateway.model", "gateway.errors", "gateway.schema_base", "gateway.units", "gateway.settings"}
# What the core may use of drivers/: the contracts and shared helpers, and the package (profile dir).
NEUTRAL_DRIVER_MODULES = {"drivers", "drivers.base", "drivers.pacing"}


def imports(source: Path) -> list[tuple[int, str]]:
    """(line, module) of every first-party import, nested ones included; `from x import y` gives x.y too."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names
                       if f"{node.module}.{a.name}".startswith("drivers."))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return [(n, m) for n, m in out if m.split(".")[0] in FIRST_PARTY]


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def protocol_packages() -> set[str]:
    return {p.name for p in (REPO / "drivers").iterdir() if p.is_dir() and (p / "__init__.py").exists()}


def test_drivers_import_only_the_neutral_core() -> None:
    bad = []
    for f in sources("drivers"):
        own = f.relative_to(REPO / "drivers").parts
        package = own[0] if len(own) > 1 else None
        for line, m in imports(f):
            if m.startswith("gateway") and m not in DRIVERS_MAY_IMPORT:
                bad.append(f"{f.relative_to(REPO)}:{line}: {m}")
            parts = m.split(".")
            if parts[0] == "drivers" and len(parts) > 1 and parts[1] in protocol_packages() and parts[1] != package:
                bad.append(f"{f.relative_to(REPO)}:{line}: {m} (another protocol's package)")
            if parts[0] in ("simulators", "tests", "bench"):
                bad.append(f"{f.relative_to(REPO)}:{line}: {m}")
    assert not bad, "\n".join(bad)


def test_the_core_imports_no_protocol_package() -> None:
    bad = [f"{f.relative_to(REPO)}:{line}: {m}" for f in sources("gateway") for line, m in imports(f)
           if m.startswith("drivers") and ".".join(m.split(".")[:2]) not in NEUTRAL_DRIVER_MODULES
           and m not in NEUTRAL_DRIVER_MODULES]
    assert not bad, "\n".join(bad)


def test_the_rules_import_nothing_of_drivers() -> None:
    bad = [f"{f.relative_to(REPO)}:{line}: {m}" for f in sources("gateway/rules") for line, m in imports(f)
           if m.split(".")[0] in ("drivers", "simulators")]
    assert not bad, "\n".join(bad)


def test_only_the_plugin_list_names_a_protocol_in_the_core() -> None:
    """The issue's acceptance check: grep -rn "modbus\\|opcua" gateway/ finds only the plugin list."""
    names = "|".join(re.escape(p.name) for p in PROTOCOLS.plugins)
    hits = []
    for f in sorted((REPO / "gateway").rglob("*")):
        if f.is_file() and f.suffix in (".py", ".md", ".yaml", ".json"):
            for n, text in enumerate(f.read_text().splitlines(), 1):
                if re.search(names, text) and not (f.name == "protocols.py" and text.strip().strip('",') in BUILTIN):
                    hits.append(f"{f.relative_to(REPO)}:{n}: {text.strip()}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("module", BUILTIN)
def test_every_registered_protocol_is_one_package_with_its_plugin(module: str) -> None:
    package, _, leaf = module.rpartition(".")
    assert package.count(".") == 1
    assert package.startswith("drivers.")
    assert leaf == "plugin"
    plugin = next(p for p in PROTOCOLS.plugins if type(p).__module__ == module)
    assert plugin.tags, f"{module}: no connection models"
    for conn in plugin.connections:
        assert conn.__module__.startswith(package), f"{conn.__name__} lives outside {package}"


# The central side (issue 12: gateway/central/, `carbon-gateway consume`) is downstream of everything.
CENTRAL_MAY_IMPORT = {"gateway.encode_compact", "gateway.replay"}


def test_nothing_upstream_imports_the_central_side() -> None:
    bad = [f"{f.relative_to(REPO)}:{line}: {m}" for f in sources("gateway")
           if "central" not in f.parts and f.name not in ("cli_consume.py",)
           for line, m in imports(f) if m.startswith("gateway.central")]
    bad += [f"{f.relative_to(REPO)}:{line}: {m}" for f in sources("drivers") for line, m in imports(f)
            if m.startswith("gateway.central")]
    assert not bad, "\n".join(bad)


def test_the_central_side_uses_only_the_wire_formats() -> None:
    bad = [f"{f.relative_to(REPO)}:{line}: {m}" for f in sources("gateway/central") for line, m in imports(f)
           if not m.startswith("gateway.central") and m not in CENTRAL_MAY_IMPORT]
    assert not bad, "\n".join(bad)
