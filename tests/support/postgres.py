"""A throw-away PostgreSQL server for the tests and benchmarks: Debian's server programs, a data folder
in a temporary directory, a free TCP port on 127.0.0.1, trust authentication, stopped and deleted at the
end. ``initdb`` refuses to run as root, so under root the server runs as ``nobody``.

The programs are found in ``$NNPROBE_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``, else on
``PATH`` (``make test`` installs Debian's ``postgresql`` when they are missing)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

#: Hang guard for the server's start and stop; never a pass/fail threshold.
START_SECONDS = 60.0


def server_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None."""
    if os.environ.get("NNPROBE_PG_BIN"):
        return Path(os.environ["NNPROBE_PG_BIN"])
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One running server; ``url(database)`` gives a SQLAlchemy URL for one of its databases."""

    def __init__(self, folder: Path, port: int, bin_dir: Path, user: str | None) -> None:
        self.folder = folder
        self.port = port
        self.bin_dir = bin_dir
        self.user = user

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://nnprobe@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=nnprobe dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _run_as(user: str | None, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    command = ["runuser", "-u", user, "--", *args] if user else args
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


@contextlib.contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a server; stop it and delete its folder on exit. ``durable=False`` turns fsync off (tests);
    ``durable=True`` keeps PostgreSQL's defaults (benchmarks)."""
    bin_dir = server_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    user = "nobody" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="nnprobe-pg-"))
    data = folder / "data"
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port = free_port()
    settings = [
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"port={port}",
        "-c",
        f"unix_socket_directories={folder}",
        "-c",
        "max_connections=200",
    ]
    if not durable:
        settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    try:
        _run_as(
            user,
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "nnprobe", "--auth=trust", "-E", "UTF8"],
            timeout=START_SECONDS,
        )
        _run_as(
            user,
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(folder / "server.log"),
                "-w",
                "-t",
                str(int(START_SECONDS)),
                "-o",
                " ".join(settings),
                "start",
            ],
            timeout=START_SECONDS + 10,
        )
        server = PostgresServer(folder, port, bin_dir, user)
        _wait_ready(server)
        yield server
    finally:
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.SubprocessError):
                _run_as(
                    user,
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                    timeout=START_SECONDS,
                )
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={server.port} user=nnprobe dbname=postgres"):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
