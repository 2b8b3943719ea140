"""The chat app's login: a user name and password from the environment or a Prefect Secret block."""

from __future__ import annotations

import os

from tasks.chat.config import ServerOptions
from tasks.core.config import ConfigError


def resolve_auth(server: ServerOptions) -> tuple[str, str] | None:
    """(username, password) for the login page, or None when no login is configured.

    The secret is read here, at launch, and only handed to Gradio: it never enters the config,
    the logs or an artifact.
    """
    if server.auth_secret:
        return _secret_block_login(server.auth_secret)
    username, password = os.environ.get(server.username_env), os.environ.get(server.password_env)
    if bool(username) != bool(password):
        missing = server.password_env if username else server.username_env
        raise ConfigError(
            f"server: login needs both {server.username_env} and {server.password_env}; {missing} is not set"
        )
    return (username, password) if username and password else None


def _secret_block_login(block: str) -> tuple[str, str]:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(block).get()
    except ValueError as error:
        raise ConfigError(f"server.auth_secret: no Prefect Secret block named {block!r} ({error})") from None
    if not (isinstance(value, dict) and value.get("username") and value.get("password")):
        raise ConfigError(
            f"server.auth_secret: the Secret block {block!r} must hold a JSON "
            "object with non-empty 'username' and 'password'"
        )
    return str(value["username"]), str(value["password"])
