"""Connections' poll schedules are spread over the second (issue 8: 500 meters answering in one loop iteration
held the event loop ~75 ms every second)."""

from __future__ import annotations

from gateway.app import poll_phase


def test_the_first_connection_starts_at_once_and_the_rest_spread_evenly() -> None:
    assert poll_phase(0) == 0.0
    for n in (2, 10, 500):
        phases = sorted(poll_phase(k) for k in range(n))
        assert all(0.0 <= p < 1.0 for p in phases)
        gaps = [b - a for a, b in zip(phases, [*phases[1:], phases[0] + 1.0], strict=True)]
        assert max(gaps) <= 3.0 / n  # golden-ratio sequence: no gap wider than a few times the even spacing
