"""A real PostgreSQL server for tests and benchmarks: initdb + pg_ctl in a folder of its own, on a
free 127.0.0.1 port, with a password (so that the tests can check it never shows).

PostgreSQL refuses to run as root; as root (CI containers), the server runs as the `postgres` user
that Debian's package creates, in a folder that user owns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.chat import free_port

BIN = Path(os.environ.get("FTLLM_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER, PASSWORD = "ftllm", "pg-secret-7f3a"


@dataclass
class PostgresServer:
    folder: Path
    port: int
    run_as: str | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [str(BIN / args[0]), *args[1:]], user=self.run_as, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-D", str(self.folder / "data"), "-m", "immediate", "-w", timeout=60)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> PostgresServer:
    if not (BIN / "initdb").is_file():
        raise RuntimeError(f"PostgreSQL is not installed at {BIN} (apt-get install postgresql, or set FTLLM_PG_BIN)")
    run_as = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="ftllm-pg-"))
    if run_as:
        shutil.chown(folder, run_as)
    (folder / "password").write_text(PASSWORD)
    if run_as:
        shutil.chown(folder / "password", run_as)
    server = PostgresServer(folder, free_port(), run_as)
    data = str(folder / "data")
    server._run(
        "initdb", "-D", data, "-U", USER, "--auth=scram-sha-256", f"--pwfile={folder / 'password'}", "-E", "UTF8"
    )
    options = f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    server._run("pg_ctl", "start", "-D", data, "-o", options, "-l", str(folder / "server.log"), "-w", "-t", "120")
    return server
