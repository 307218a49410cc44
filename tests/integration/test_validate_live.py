"""`validate --live` reads each meter once and catches a wrong word order through `expect` ranges."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.registry import load_config
from simulators.runner import build_servers
from tests.helpers import three_meters, write_config

pytestmark = pytest.mark.usefixtures("no_leftover_tasks")


async def run_live(cfg_dir: Path) -> int:
    # main() runs its own event loop: keep it off ours, where the simulators are serving.
    return await asyncio.to_thread(main, ["validate", "--config", str(cfg_dir), "--live"])


async def test_live_validation_passes_then_catches_a_word_order_mistake(
        tmp_path: Path, ports: tuple[int, int, int], capsys: pytest.CaptureFixture[str]) -> None:
    good = three_meters(ports).replace("    only_points: [voltage_l1, total_active_power, total_import_active_energy]",
                                       "    only_points: [voltage_l1, total_active_power, total_import_active_energy]\n"
                                       "    points:\n      - {name: voltage_l1, expect: [180, 270]}")
    cfg_dir = write_config(tmp_path / "good", good)
    servers = build_servers(load_config(cfg_dir))
    for srv, _ in servers.values():
        await srv.start()
    try:
        assert await run_live(cfg_dir) == 0
        assert "ok (3 instruments" in capsys.readouterr().out
        # The technician registered the meter with the words swapped: the value decodes to garbage.
        wrong = good.replace("{name: voltage_l1, expect: [180, 270]}",
                             "{name: voltage_l1, order: CDAB, expect: [180, 270]}")
        bad_dir = write_config(tmp_path / "bad", wrong)
        assert await run_live(bad_dir) == 2
    finally:
        for srv, _ in servers.values():
            await srv.stop()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.match(r"^.+plant\.yaml:\d+: PM-01\.voltage_l1: read .+ V, expected 180\.\.270 \(check word order 'CDAB'",
                    err[0]), err[0]
