"""HAProxy, started from the shipped deployments/proxy/haproxy.cfg, in front of chat-app replicas.

The config takes its addresses from the environment (HAProxy expands "${NAME}" itself), so the test
runs the file exactly as shipped. The runtime API (a Unix socket) reads each replica's state and
takes one out of rotation, as an operator would with `socat`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.chat import free_port
from tests.support.processes import ROOT, wait_for

CONFIG = ROOT / "deployments" / "proxy" / "haproxy.cfg"
BACKEND = "replicas"
COOKIE = "SERVERID"


@dataclass
class Proxy:
    url: str
    port: int
    admin_socket: Path
    log_file: Path
    process: subprocess.Popen

    def command(self, line: str) -> str:
        """One runtime API command; returns HAProxy's answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(self.admin_socket))
            client.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := client.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each replica's status as the proxy sees it: UP, DOWN, MAINT, DRAIN, ..."""
        lines = self.command("show stat").lstrip("# ").splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def set_state(self, server: str, state: str) -> None:
        """`ready`, `drain` (only browsers already on it) or `maint` (none: they move to another replica)."""
        answer = self.command(f"set server {BACKEND}/{server} state {state}")
        assert not answer.strip(), f"HAProxy refused 'set server {server} state {state}': {answer}"

    def wait_until(self, expected: dict[str, str], timeout: float = 15) -> None:
        wait_for(
            lambda: all(self.states().get(name, "").startswith(state) for name, state in expected.items()),
            timeout,
            f"HAProxy to see {expected} (last seen {self.states()})",
            interval=0.2,
        )


def haproxy_binary() -> str:
    binary = shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/sbin/haproxy") if os.access(path, os.X_OK)), None
    )
    if binary is None:
        pytest.fail("HAProxy is missing: apt-get install -y haproxy (the replica tests run the real proxy)")
    return binary


@contextlib.contextmanager
def haproxy(replicas: dict[str, int], folder: Path) -> Iterator[Proxy]:
    """HAProxy on a free port in front of replicas `a` and `b` (their ports on 127.0.0.1)."""
    binary = haproxy_binary()
    port = free_port()
    admin_socket = folder / "haproxy-admin.sock"
    env = {
        **os.environ,
        "FTLLM_PROXY_BIND": f"127.0.0.1:{port}",
        "FTLLM_PROXY_ADMIN_SOCKET": str(admin_socket),
        **{f"FTLLM_REPLICA_{name.upper()}": f"127.0.0.1:{replica_port}" for name, replica_port in replicas.items()},
    }
    log_file = folder / "haproxy.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen([binary, "-f", str(CONFIG)], env=env, stdout=log, stderr=subprocess.STDOUT)
    proxy = Proxy(f"http://127.0.0.1:{port}/", port, admin_socket, log_file, process)
    try:
        wait_for(lambda: process.poll() is not None or admin_socket.exists(), 10, "HAProxy's runtime API socket")
        if process.poll() is not None:
            raise AssertionError(f"HAProxy exited with {process.returncode}:\n{log_file.read_text()}")
        yield proxy
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
