"""A throwaway PostgreSQL server for the tests: the binaries of Debian's ``postgresql`` package,
one cluster in a temporary directory, on 127.0.0.1 and a free port (or the address and port
given: then clients of that address's subnet may connect too), with a random password.

initdb and postgres refuse to run as root, so as root they run as the ``postgres`` user that the
Debian package creates. The server is started once per test session and stopped by PID; each
test gets a database of its own, cloned from a migrated template (``CREATE DATABASE ...
TEMPLATE``), which is faster than migrating every time.
"""
from __future__ import annotations

import glob
import itertools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from qcompute.server.testing import free_port

__all__ = ["PostgresServer", "find_bindir"]

INSTALL_HINT = "install Debian's postgresql package (apt-get install -y postgresql)"


def find_bindir() -> Path:
    """``$QCOMPUTE_TEST_PG_BINDIR``, else the newest /usr/lib/postgresql/<version>/bin, else the
    directory of an ``initdb`` on the PATH."""
    if os.environ.get("QCOMPUTE_TEST_PG_BINDIR"):
        return Path(os.environ["QCOMPUTE_TEST_PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError(f"no PostgreSQL server binaries (initdb): {INSTALL_HINT}")


class PostgresServer:
    """One PostgreSQL cluster: :meth:`start`, :meth:`create_database`, :meth:`stop`."""

    user = "qcompute"
    template = "qcompute_template"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.bindir = find_bindir()
        self.host = host
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        self.root = Path(tempfile.mkdtemp(prefix="qcompute-pg-"))
        self.process: subprocess.Popen | None = None
        self._names = itertools.count(1)
        self._run_as = self._server_user() if os.geteuid() == 0 else None

    @staticmethod
    def _server_user() -> pwd.struct_passwd:
        """Root may not run the server: the Debian package's system user does."""
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(f"running as root, and no 'postgres' user: {INSTALL_HINT}, "
                               "which creates it") from None

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/"
                f"{database}")

    def start(self, timeout: float = 60.0) -> None:
        data = self.root / "data"
        password_file = self.root / "password"
        password_file.write_text(self.password)
        if self._run_as:
            for path in (self.root, password_file):
                os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)
        self._run([self.bindir / "initdb", "-D", data, "-U", self.user, "--auth=scram-sha-256",
                   f"--pwfile={password_file}", "--encoding=UTF8", "--locale=C.UTF-8"],
                  check=True, capture_output=True)
        if self.host != "127.0.0.1":  # initdb lets in loopback only: add the host's subnet
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet scram-sha-256\n")
        log = open(self.root / "server.log", "wb")
        # no socket file, TCP on one address; durability off: the data dies with the session
        self.process = self._run(
            [self.bindir / "postgres", "-D", data, "-h", self.host, "-p", str(self.port),
             "-k", "", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=300"],
            popen=True, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect():
                    break
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("PostgreSQL did not start: "
                                       + (self.root / "server.log").read_text()[-2000:])
                time.sleep(0.1)

    def _run(self, args, *, popen: bool = False, **kw):
        args = [str(a) for a in args]
        if self._run_as:
            kw.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        kw.setdefault("cwd", self.root)
        return subprocess.Popen(args, **kw) if popen else subprocess.run(args, **kw)

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password, dbname=database, autocommit=True,
                               connect_timeout=5)

    def create_database(self, *, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        with self.connect() as conn:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(statement)
        return self.url(name)

    def make_template(self, prepare) -> None:
        """Create the template database and call ``prepare(url)`` to fill it (migrations)."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        prepare(self.url(self.template))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect, then stop
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
