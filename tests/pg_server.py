"""A throw-away PostgreSQL cluster on 127.0.0.1 for tests (Debian's postgresql package).

``initdb`` into a temporary folder, ``postgres`` listening on a free port of 127.0.0.1 with its
socket in that folder, a password for TCP connections; stopped by ``pg_ctl stop -m fast`` (the
postmaster's PID) and removed at the end. ``initdb`` and ``postgres`` refuse to run as root, so
under root (CI) the cluster runs as an unprivileged user (``postgres``, else ``nobody``) and its
folder belongs to that user.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SUPERUSER = "workbench"
UNPRIVILEGED = ("postgres", "nobody")  # who runs the cluster when the tests run as root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binaries() -> Path | None:
    """The folder holding ``initdb``, ``postgres`` and ``pg_ctl``: on the PATH, else the newest
    of Debian's ``/usr/lib/postgresql/VERSION/bin``; None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        folder = Path(on_path).resolve().parent
        if (folder / "postgres").is_file():
            return folder
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin")
             if (p / "initdb").is_file() and (p / "postgres").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _run_as() -> pwd.struct_passwd | None:
    """The account the cluster runs as: None (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {UNPRIVILEGED} exists: "
                       "PostgreSQL refuses to run as root")


@dataclass
class PgServer:
    bin: Path
    port: int
    home: Path  # data/, sock/, the log and the password file
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    account: pwd.struct_passwd | None = None
    process: subprocess.Popen[bytes] | None = None
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "postgres.log"

    def uri(self, database: str = "postgres") -> str:
        """A SQLAlchemy URI for ``database`` over TCP on 127.0.0.1. The driver is named:
        SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg (3), and the test extras
        install psycopg2."""
        return (f"postgresql+psycopg2://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def connect(self, database: str = "postgres") -> Any:
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER,
                                password=self.password, dbname=database, connect_timeout=5)

    def new_database(self, prefix: str = "wb") -> str:
        """Create an empty database; its URI."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        connection = self.connect()
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        self.databases.append(name)
        return self.uri(name)

    def _popen(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        env = {**os.environ, "LC_ALL": "C"}
        env.pop("PGDATA", None)
        if self.account is not None:
            env.update(HOME=str(self.home), USER=self.account.pw_name,
                       LOGNAME=self.account.pw_name)
            kw.update(user=self.account.pw_uid, group=self.account.pw_gid, extra_groups=[])
        return subprocess.Popen(args, env=env, cwd=self.home, **kw)  # noqa: S603

    def _run(self, args: list[str], timeout: float = 120) -> None:
        process = self._popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output, _ = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {output.decode(errors='replace')}")

    def start(self) -> PgServer:
        self.account = _run_as()
        (self.home / "sock").mkdir(mode=0o700)
        secret = self.home / "password"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        if self.account is not None:
            for path in (self.home, self.home / "sock", secret):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        # Throw-away cluster: no fsync, C locale; TCP needs the password, the socket (in a
        # folder only the cluster's user can enter) is trusted.
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                   f"--pwfile={secret}", "--auth-local=trust", "--auth-host=scram-sha-256",
                   "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        log = self.log.open("wb")
        try:
            self.process = self._popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                 "-p", str(self.port), "-k", str(self.home / "sock"),
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        import psycopg2

        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text(errors='replace')}")
            try:
                self.connect().close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within {timeout} s:"
                                       f" {self.log.read_text(errors='replace')}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` (it signals the postmaster's PID), then wait for this PID."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self._run([str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast",
                       "-w", "-t", "60"], timeout=90)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.process.terminate()  # SIGTERM: a smart shutdown, then the kill below
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the test session (each user takes its own database); the
    tests using it are skipped where PostgreSQL is not installed, except in CI (``$CI`` set),
    where .ci/run installs it: there a missing PostgreSQL fails them, never passes as skipped."""
    folder = binaries()
    if folder is None:
        missing = "PostgreSQL is not installed (initdb/pg_ctl; Debian: apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    # Not under pytest's temporary folder: as root it is private to root, and the cluster's
    # user must enter its own folder.
    home = Path(tempfile.mkdtemp(prefix="workbench-pg-"))
    server = PgServer(bin=folder, port=_free_port(), home=home)
    try:
        yield server.start()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
