"""Serving the chat app: on 127.0.0.1 by default, with the configured login, until stopped."""

from __future__ import annotations

import socket
import time

from tasks.chat.auth import resolve_auth
from tasks.chat.config import ChatAppConfig
from tasks.core.config import ConfigError


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the server itself will: connections of a previous run in TIME_WAIT do not block the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise ConfigError(
                f"server.port: {host}:{port} is not free ({error.strerror}); stop what runs "
                f"there or pick another port with --set server.port=N"
            ) from None


def launch(app, config: ChatAppConfig) -> str:
    """Serve the app in background threads; returns its URL. share stays off: no public tunnel."""
    from tasks.core.secrets import install_redaction

    check_port_free(config.server.host, config.server.port)
    auth = resolve_auth(config.server)
    if auth:
        install_redaction(auth[1])  # the password never reaches a log, even from a library
    app.launch(
        server_name=config.server.host,
        server_port=config.server.port,
        share=False,
        auth=auth,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        footer_links=["api"],
    )
    return f"http://{config.server.host}:{config.server.port}/"


def serve_until_stopped(app, seconds: float | None = None) -> None:
    """Block while the app serves: forever (until the process is stopped or cancelled) or `seconds`."""
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while app.is_running and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
    finally:
        app.close()  # frees the port at once, also when a cancellation interrupts the wait
