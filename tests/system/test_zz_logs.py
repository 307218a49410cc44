"""Acceptance of issue 7: over the gateway logs of the whole system-test run, every traceback is a
supervisor's deliberate report of a failed task. Runs last in this package (file order)."""

from __future__ import annotations

from pathlib import Path

from tests.system.conftest import stray_tracebacks


def test_only_the_supervisor_reports_tracebacks(system_logs: Path) -> None:
    logs = sorted(system_logs.glob("*.log"))
    stray = {p.name: found for p in logs if (found := stray_tracebacks(p.read_text(errors="replace")))}
    assert not stray, stray
    # When the package runs as a whole, the poller test's deliberate report is among the logs: the check
    # above has seen a real traceback and accepted it for the right reason.
    deliberate = [p for p in logs if "Traceback (most recent call last)" in p.read_text(errors="replace")]
    assert all("gateway.supervisor: task " in p.read_text() for p in deliberate)


def test_stray_traceback_is_caught() -> None:
    text = ("2026-01-01 00:00:00,000 ERROR gateway.supervisor: task writer failed: ValueError: x; restarting in 1 s\n"
            "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: x\n"
            "2026-01-01 00:00:01,000 ERROR asyncio: Task exception was never retrieved\n"
            "Traceback (most recent call last):\n  File \"y\", line 2\nKeyError: 'y'\n")
    stray = stray_tracebacks(text)
    assert len(stray) == 1
    assert "never retrieved" in stray[0]
