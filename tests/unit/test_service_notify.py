"""gateway/service.py: the sd_notify addresses, WATCHDOG_USEC/WATCHDOG_PID, and when the watchdog is pinged."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.service import Notifier, health, notify_address, watchdog_interval_s


def test_notify_address_path_abstract_and_unsupported() -> None:
    assert notify_address({"NOTIFY_SOCKET": "/run/systemd/notify"}) == "/run/systemd/notify"
    assert notify_address({"NOTIFY_SOCKET": "@abstract/name"}) == "\0abstract/name"
    assert notify_address({}) is None
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_watchdog_interval_from_usec_and_pid() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "43"}, pid=42) is None  # not ours
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_interval_s({}) is None


def test_notifier_sends_one_datagram_to_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as srv:
        srv.bind(str(path))
        n = Notifier({"NOTIFY_SOCKET": str(path)})
        assert n.send("READY=1", "STATUS=ok")
        assert srv.recv(4096) == b"READY=1\nSTATUS=ok"
        n.close()


def test_notifier_outside_systemd_and_with_a_gone_socket(tmp_path: Path) -> None:
    assert not Notifier({}).send("READY=1")
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not n.send("WATCHDOG=1")  # one log line, no exception
    n.close()


RUNNING = {"writer": {"state": "running"}, "forwarder": {"state": "running"}, "monitor": {"state": "running"}}


def test_healthy_while_the_writer_beats() -> None:
    assert health(now=100.0, writer_beat=99.9, limit_s=2.0, fatal=False, components=RUNNING, failed_since={}).ok


def test_a_writer_without_progress_for_a_whole_interval_is_unhealthy() -> None:
    h = health(now=100.0, writer_beat=97.0, limit_s=2.0, fatal=False, components=RUNNING, failed_since={})
    assert not h.ok
    assert "store writer no progress for 3 s" in h.problem
    assert not health(now=1.0, writer_beat=None, limit_s=2.0, fatal=False, components=RUNNING, failed_since={}).ok


def test_a_fatal_failure_is_unhealthy() -> None:
    assert not health(now=1.0, writer_beat=1.0, limit_s=2.0, fatal=True, components=RUNNING, failed_since={}).ok


def test_a_core_task_failed_for_longer_than_the_interval_is_unhealthy_a_brief_failure_is_not() -> None:
    comps = {**RUNNING, "forwarder": {"state": "failed", "error": "RuntimeError: boom"}}
    brief = health(now=10.0, writer_beat=10.0, limit_s=2.0, fatal=False, components=comps,
                   failed_since={"forwarder": 9.0})
    assert brief.ok  # the supervisor restarts it with backoff; one restart is no reason to kill the process
    long = health(now=10.0, writer_beat=10.0, limit_s=2.0, fatal=False, components=comps,
                  failed_since={"forwarder": 5.0})
    assert not long.ok
    assert "forwarder" in long.problem
    assert "boom" in long.problem


def test_a_failing_poller_is_not_a_watchdog_matter() -> None:
    comps = {**RUNNING, "poll 127.0.0.1:502": {"state": "failed", "error": "x"}}
    assert health(now=10.0, writer_beat=10.0, limit_s=2.0, fatal=False, components=comps,
                  failed_since={"poll 127.0.0.1:502": 0.0}).ok
