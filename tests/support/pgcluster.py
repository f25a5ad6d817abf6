"""A private PostgreSQL cluster for tests that stop and start the database server.

`initdb` into a fresh directory, `pg_ctl start` on a free port of 127.0.0.1 (trust auth, a
socket directory of its own), stopped and removed afterwards. Never the machine's shared
cluster: a test that takes the database away must not take it from anyone else.

PostgreSQL refuses to run as root; as root the cluster runs as the `postgres` user
(`runuser`), which owns its directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sink import free_port

__all__ = ["PgCluster", "find_pg_bin", "pg_cluster"]


def find_pg_bin() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PgCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        # Short path: the socket's name must fit in sun_path.
        self.dir = Path(tempfile.mkdtemp(prefix="mgpg"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self.dir, check=False)

    def init(self) -> PgCluster:
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr or done.stdout}")
        return self

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", opts,
                         "-w", "-t", "60", "start")
        if done.returncode:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr or done.stdout}\n"
                               f"{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """`fast` ends every session and shuts down cleanly; `immediate` is a crash."""
        done = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        if done.returncode and "not running" not in (done.stderr + done.stdout).lower():
            raise RuntimeError(f"pg_ctl stop failed: {done.stderr or done.stdout}")

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def create_database(self, name: str) -> str:
        done = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                         name)
        if done.returncode:
            raise RuntimeError(f"createdb failed: {done.stderr}")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def remove(self) -> None:
        if self.data.exists() and self.running:
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true, refusing to skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A started private cluster; removed afterwards. Skips where PostgreSQL's server
    binaries are missing (fails under CI)."""
    bindir = find_pg_bin()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    assert bindir is not None
    cluster = PgCluster(bindir).init()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
