"""Database servers of ./scripts/chaos's own, which it may crash and stop.

Each server gets a spare port on 127.0.0.1 (it listens nowhere else), or on an
address inside a network namespace the caller made (``namespace``, ``host``:
see chaos_network.py), and a data directory under the run's temporary
directory; the shared servers on 5432 and 3306 are never touched. Durability is
the servers' default (every commit flushed to disk): only buffer sizes are made
small, which changes no semantics.

A server offers ``database(name)`` (a new database, and the dbqueue URL of it),
``crash()`` (an immediate restart: committed data must survive, nothing else),
``stop()`` and ``start()`` (an outage), ``freeze()`` and ``thaw()`` (a server
that hangs: its processes stopped, while its host's kernel still accepts
connections and acknowledges whatever is sent) and ``close()`` (gone for good,
at the end).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

READY_TIMEOUT = 60.0  # seconds a server may take to accept connections (crash recovery)


def spare_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo += [int(child) for child in children.read().split()]
        except FileNotFoundError:  # it ended meanwhile
            continue
    return found


def _signal_all(pid: int, sig: signal.Signals) -> None:
    for each in _descendants(pid):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(each, sig)


def in_namespace(namespace: str | None) -> list[str]:
    """The prefix that runs a command inside ``namespace`` (none for None)."""
    return ["ip", "netns", "exec", namespace] if namespace else []


def wait_until(ready, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not accept connections within {READY_TIMEOUT:.0f} s")
        time.sleep(0.1)


class SQLite:
    """No server: a file per database. Has no server faults."""

    backend = "sqlite"
    has_server = False

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)

    def database(self, name: str) -> str:
        return f"sqlite:///{self.root / name}.db"

    def close(self) -> None:
        pass


class Postgres:
    """A PostgreSQL cluster of the newest installed version, run as user postgres
    when we are root (initdb and pg_ctl refuse root)."""

    backend = "postgresql"
    has_server = True

    @staticmethod
    def _versions() -> list[Path]:
        return sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: [int(n) for n in p.parent.parent.name.split(".")])

    @classmethod
    def installed(cls) -> bool:
        return bool(cls._versions())

    def __init__(self, root: Path, namespace: str | None = None, host: str = "127.0.0.1") -> None:
        versions = self._versions()
        if not versions:
            raise RuntimeError("PostgreSQL not found under /usr/lib/postgresql")
        self.bin = versions[-1].parent
        self.root, self.data, self.port = root, root / "data", spare_port()
        self.host, self.inside = host, in_namespace(namespace)
        root.mkdir(parents=True)
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")  # --no-sync: only initdb's own files
        if host != "127.0.0.1":  # initdb trusts loopback only; let the namespace's peer in
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")
        self.start()

    def _run(self, program: str, *args: str) -> None:
        # A session of its own: a Ctrl-C at the terminal must not stop the
        # server before the script has stopped its workers.
        subprocess.run([*self.inside, *self.as_postgres, str(self.bin / program), *args],
                       check=True,
                       stdout=subprocess.DEVNULL, start_new_session=True)

    def _pg_ctl(self, *args: str) -> None:
        settings = (f"-c listen_addresses={self.host} -c port={self.port} "
                    f"-c unix_socket_directories={self.root} -c shared_buffers=32MB "
                    f"-c max_connections=300")
        self._run("pg_ctl", *args, "-w", "-t", str(int(READY_TIMEOUT)), "-D", str(self.data),
                  "-l", str(self.root / "server.log"), "-o", settings)

    def start(self) -> None:
        self._pg_ctl("start")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def crash(self) -> None:
        self._pg_ctl("restart", "-m", "immediate")

    def _postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def freeze(self) -> None:
        _signal_all(self._postmaster(), signal.SIGSTOP)

    def thaw(self) -> None:
        _signal_all(self._postmaster(), signal.SIGCONT)

    def close(self) -> None:
        subprocess.run([*self.as_postgres, str(self.bin / "pg_ctl"), "stop", "-m", "immediate",
                        "-D", str(self.data)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"


class MariaDB:
    """A mariadbd (or mysqld) with a data directory of its own."""

    backend = "mariadb"
    has_server = True

    @staticmethod
    def _programs() -> tuple[str | None, str | None]:
        server = next((p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld")
                       if os.access(p, os.X_OK)), None)
        return server, shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")

    @classmethod
    def installed(cls) -> bool:
        return None not in cls._programs()

    def __init__(self, root: Path, namespace: str | None = None, host: str = "127.0.0.1") -> None:
        self.server, install = self._programs()
        if self.server is None or install is None:
            raise RuntimeError("MariaDB not found (mariadbd, mariadb-install-db)")
        self.root, self.port = root, spare_port()
        self.host, self.inside = host, in_namespace(namespace)
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True)
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        # root with an empty password over TCP, as the tests' local server has it.
        subprocess.run([install, "--no-defaults", f"--datadir={root / 'data'}", *as_root,
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        *self._tuning()], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.start()
        if host != "127.0.0.1":  # root may log in from localhost only; let the peer in
            self._sql("CREATE USER 'root'@'10.%'",
                      "GRANT ALL PRIVILEGES ON *.* TO 'root'@'10.%' WITH GRANT OPTION")

    @staticmethod
    def _tuning() -> list[str]:
        return ["--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
                "--performance-schema=OFF"]

    def start(self) -> None:
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        command = [*self.inside, self.server, "--no-defaults", f"--datadir={self.root / 'data'}",
                   f"--port={self.port}", f"--bind-address={self.host}",
                   f"--socket={self.root / 'mysqld.sock'}", f"--pid-file={self.root / 'pid'}",
                   f"--log-error={self.root / 'server.log'}", "--skip-name-resolve",
                   "--max-connections=300", *as_root, *self._tuning()]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._answers, "MariaDB")

    def _answers(self) -> bool:
        import pymysql

        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"mariadbd exited; see {self.root / 'server.log'}")
        try:  # by its socket: the server's own, whatever address it listens on
            pymysql.connect(unix_socket=str(self.root / "mysqld.sock"), user="root",
                            connect_timeout=1).close()
            return True
        except pymysql.MySQLError:
            return False

    def _sql(self, *statements: str) -> None:
        import pymysql

        connection = pymysql.connect(unix_socket=str(self.root / "mysqld.sock"), user="root")
        try:
            for statement in statements:
                connection.cursor().execute(statement)
        finally:
            connection.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # a clean shutdown
            self.process.wait(timeout=READY_TIMEOUT)

    def crash(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.start()

    def freeze(self) -> None:
        if self.process is not None:
            _signal_all(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            _signal_all(self.process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def database(self, name: str) -> str:
        self._sql(f"CREATE DATABASE `{name}`")
        return f"mysql://root@{self.host}:{self.port}/{name}"


SERVERS = {"postgresql": Postgres, "mariadb": MariaDB, "sqlite": SQLite}
