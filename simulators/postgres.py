"""A private PostgreSQL on a free loopback port, for tests and benchmarks (issue 12: the consumer).

Debian's server binaries (`apt-get install postgresql`, which `make test` does) are found by glob under
/usr/lib/postgresql/*/bin, newest version first; a cluster is made with `initdb` in a temporary directory
and served by `postgres` on 127.0.0.1 with its unix socket in that directory too. The machine's own
PostgreSQL (if one runs) is never touched: another port, another data directory, no shared socket.

PostgreSQL refuses to run as root. As root, the cluster belongs to an unprivileged account (`postgres`,
which the Debian package creates, else `nobody`) and initdb and postgres run under it (subprocess's
`user=`/`group=`): the temporary directory is handed to that account, nothing else is.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from simulators.broker import free_port


class PostgresNotFound(RuntimeError):
    pass


def server_bin() -> Path:
    """The bin directory of the newest PostgreSQL server installed (Debian layout), or PATH's initdb."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/")[3])], reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise PostgresNotFound("PostgreSQL server binaries not found (Debian/Ubuntu: apt-get install postgresql)")


def _account() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise PostgresNotFound("running as root and no unprivileged account (postgres, nobody) to run PostgreSQL as")


class PrivatePostgres:
    def __init__(self, *, durable: bool = False, port: int | None = None) -> None:
        """`durable`: fsync and synchronous commit as in production (benchmarks); tests run without them."""
        self.bin = server_bin()
        self.port = port or free_port()
        self.durable = durable
        self._tmp = Path(tempfile.mkdtemp(prefix="carbon-pg-"))
        self.data = self._tmp / "data"
        self.log = self._tmp / "postgres.log"
        self._as = _account()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_kw(self) -> dict[str, object]:
        if self._as is None:
            return {}
        return {"user": self._as[0], "group": self._as[1], "extra_groups": []}

    def start(self, timeout_s: float = 60.0) -> PrivatePostgres:
        if self._as is not None:
            os.chown(self._tmp, *self._as)
        # --no-sync: a test cluster need not survive power loss; -A trust: loopback only, this user only.
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--locale=C", "--no-sync", "--no-instructions"], check=True, capture_output=True,
                       cwd=self._tmp, **self._run_kw())  # type: ignore[call-overload]
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self._tmp}",
                    "-c", "max_connections=50", "-c", "shared_buffers=64MB"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                           *settings], stdout=log, stderr=log, cwd=self._tmp,
                                          **self._run_kw())  # type: ignore[call-overload]
        deadline = time.monotonic() + timeout_s
        import psycopg

        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.log.read_text()[-2000:]}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{self.port} within {timeout_s}s")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, no waiting for them
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
