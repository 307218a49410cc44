"""A private Mosquitto on a free loopback port, for tests, demos and benchmarks.

Never uses the machine's system broker: a user's machine will not have one on 1883, and tests
must not depend on it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoNotFound(RuntimeError):
    pass


class PrivateBroker:
    def __init__(self, *, port: int | None = None, users: dict[str, str] | None = None,
                 persistence_dir: Path | None = None, tls: tuple[Path, Path, Path] | None = None,
                 acl_file: Path | None = None) -> None:
        """`tls`: (CA certificate, server certificate, server key) PEM files: the listener speaks TLS only.
        `acl_file`: a Mosquitto ACL file (with `users`: e.g. config/mosquitto/acl)."""
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
        if binary is None:
            raise MosquittoNotFound("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.users = users
        self.persistence_dir = persistence_dir
        self.tls = tls
        self.acl_file = acl_file
        self._tmp = tempfile.TemporaryDirectory(prefix="carbon-broker-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The mosquitto process (tests stop and continue it with SIGSTOP/SIGCONT: a broker that hangs)."""
        assert self._proc is not None, "broker not started"
        return self._proc.pid

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        tmp = Path(self._tmp.name)
        lines = [f"listener {self.port} 127.0.0.1",
                 # As root, mosquitto would switch to the `mosquitto` user and lose access to our temp files.
                 *(["user root"] if os.geteuid() == 0 else []), "max_inflight_messages 0", "max_queued_messages 0",
                 f"log_dest file {tmp / 'mosquitto.log'}"]
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}", "tls_version tlsv1.2"]
        if self.persistence_dir is not None:
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        if self.users:
            pwfile = tmp / "passwd"
            pwfile.write_text("")
            for user, pw in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
            if self.acl_file is not None:
                lines.append(f"acl_file {self.acl_file}")
        else:
            lines.append("allow_anonymous true")
        conf = tmp / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, timeout_s: float = 10.0) -> PrivateBroker:
        conf = self._write_config()
        self._proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout_s}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
