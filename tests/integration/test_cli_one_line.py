"""Real `carbon-gateway` processes: where one line and an exit code are promised, that is what comes
out (issue 7: "a traceback where one line was promised"), never a traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_STORE
from tests.helpers import three_meters, write_config

GATEWAY = [sys.executable, "-m", "gateway", "--log-level", "ERROR"]


def cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_line(proc: subprocess.CompletedProcess[str], rc: int, *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.returncode == rc, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def config(tmp_path: Path, ports: tuple[int, int, int]) -> Path:
    return write_config(tmp_path / "cfg", three_meters(ports), url="mqtt://127.0.0.1:1", store=tmp_path / "gw.db")


@pytest.mark.parametrize(("url", "needle"), [
    ("mqtt://127.0.0.1:99999", "Port out of range"),
    ("not a url", "must look like mqtt://host:port"),
    ("mqtt://user:pw@127.0.0.1:1883", "credentials in the URL are not used"),
])
def test_run_with_a_bad_mqtt_url(url: str, needle: str, config: Path) -> None:
    proc = cli("run", "--config", str(config), "--mqtt-url", url, "--duration", "1")
    assert one_line(proc, 2, needle).startswith("--mqtt-url: ")


def test_run_with_a_missing_password_file(config: Path) -> None:
    text = (config / "gateway.yaml").read_text().replace(
        "topic_prefix: carbon,", "topic_prefix: carbon, username: gw, password_file: /nonexistent/pw,")
    (config / "gateway.yaml").write_text(text)
    proc = cli("run", "--config", str(config), "--duration", "1")
    one_line(proc, 2, "gateway.yaml:2: mqtt.password_file: cannot read /nonexistent/pw: No such file")


def test_run_with_an_unset_password_env(config: Path) -> None:
    text = (config / "gateway.yaml").read_text().replace(
        "topic_prefix: carbon,", "topic_prefix: carbon, username: gw, password_env: CG_TEST_UNSET_PW,")
    (config / "gateway.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CG_TEST_UNSET_PW"}
    proc = cli("run", "--config", str(config), "--duration", "1", env=env)
    one_line(proc, 2, "mqtt.password_env: environment variable CG_TEST_UNSET_PW is not set")


def _read_only_dir(tmp_path: Path) -> tuple[list[str], Path]:
    """A command prefix and a directory on which writes fail: a read-only tmpfs in a private mount
    namespace as root (root ignores permission bits), a mode-0555 directory otherwise."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        assert shutil.which("unshare"), "util-linux unshare is needed to mount a read-only tmpfs"
        return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o ro tmpfs "{ro}" && exec "$0" "$@"'], ro
    ro.chmod(0o555)
    return [], ro


def test_run_with_the_store_on_a_read_only_mount(config: Path, tmp_path: Path) -> None:
    prefix, ro = _read_only_dir(tmp_path)
    for store in (ro / "gw.db", ro / "sub" / "gw.db"):
        proc = subprocess.run([*prefix, *GATEWAY, "run", "--config", str(config), "--store", str(store),
                               "--duration", "1"], capture_output=True, text=True, timeout=60)
        line = one_line(proc, EXIT_STORE, "error: ", str(ro), "not writable")  # the store's documented exit code
        assert ("read-only file system" in line) == (os.geteuid() == 0)
        proc = subprocess.run([*prefix, *GATEWAY, "validate", "--config", str(config)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr  # the configured store (not --store) is writable


def test_validate_with_the_store_on_a_read_only_mount(config: Path, tmp_path: Path) -> None:
    prefix, ro = _read_only_dir(tmp_path)
    text = (config / "gateway.yaml").read_text().replace(str(tmp_path / "gw.db"), str(ro / "var" / "gw.db"))
    (config / "gateway.yaml").write_text(text)
    proc = subprocess.run([*prefix, *GATEWAY, "validate", "--config", str(config)], capture_output=True,
                          text=True, timeout=60)
    one_line(proc, 2, "gateway.yaml:3: store.path: cannot write the store: directory", "not writable")


def test_watch_against_a_closed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        proc = cli("watch", "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--duration", "1")
    one_line(proc, 1, f"error: cannot connect to the mqtt broker 127.0.0.1:{port}", "refused")


def test_watch_with_a_bad_url() -> None:
    one_line(cli("watch", "--mqtt-url", "mqtt://127.0.0.1:70000", "--duration", "1"), 2, "--mqtt-url: ")


def test_watch_with_a_bad_prefix() -> None:
    one_line(cli("watch", "--prefix", "a/#", "--duration", "1"), 2, "--prefix: must not contain the MQTT wildcards")


def test_simulate_on_a_port_in_use(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = write_config(tmp_path, three_meters((ports[0], port, ports[2])))
        proc = cli("simulate", "--config", str(cfg), "--duration", "5")
    line = one_line(proc, 1, f"error: cannot listen on 127.0.0.1:{port} ", "in use")
    assert str(ports[0]) not in line
