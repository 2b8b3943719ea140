"""Secrets for a run (the Hub token) and the log filter that keeps them out of every log.

A token is read from `HF_TOKEN`, else from a Prefect Secret block, and is then only ever passed
as an argument: never logged, never put into MLflow params, tags or artifacts. `install_redaction`
is the safety net for whatever a library might log anyway.
"""

from __future__ import annotations

import logging
import os
import threading

REDACTED = "***"
PREFECT_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")

_secrets: set[str] = set()
_lock = threading.Lock()
_factory_installed = False


class SecretError(ValueError):
    """A secret that was asked for by name cannot be read; the message names it, never its value."""


def hf_token(secret_block: str | None = None) -> str | None:
    """The Hub token: `HF_TOKEN`, else the Prefect Secret block `secret_block`, else None."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if token:
        return token
    if not secret_block:
        return None
    return secret_string(secret_block, "publish.token_secret", hint="or set HF_TOKEN")


def secret_string(secret_block: str, key: str, hint: str = "") -> str:
    """The string in the Prefect Secret block `secret_block`, redacted from every log from now on.

    `key` is the config option that named the block: errors name it and the block, never a value.
    """
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(secret_block).get()
    except ValueError as error:  # Prefect: "Unable to find block document named ..."
        raise SecretError(
            f"{key}: no Prefect Secret block named {secret_block!r} "
            f"(create it with: prefect block create secret{', ' + hint if hint else ''}) ({error})"
        ) from None
    if not isinstance(value, str) or not value.strip():
        raise SecretError(f"{key}: the Prefect Secret block {secret_block!r} holds no token string")
    install_redaction(value.strip())
    return value.strip()


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):  # longest first: one secret may contain another
        text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Replaces every registered secret with *** in a record's message, args and traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()  # msg % args, rendered once: a secret in either is caught
        except Exception:  # a malformed call (args not matching msg): logging reports it later, as usual
            message = None
        if message is not None:
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_filter = RedactSecrets()


def _attach(target: logging.Logger | logging.Handler) -> None:
    if _filter not in target.filters:
        target.addFilter(_filter)


def install_redaction(*secrets: str) -> None:
    """Redact `secrets` from every log record from now on; calling it again only adds secrets."""
    global _factory_installed
    with _lock:
        _secrets.update(s for s in secrets if s and len(s) >= 4)  # never blank out single characters
        for logger in (logging.getLogger(), *(logging.getLogger(name) for name in PREFECT_LOGGERS)):
            _attach(logger)
            for handler in logger.handlers:
                _attach(handler)
        # A logger's filters only see records logged on that very logger, not its children's, and
        # handlers added later (pytest's, Prefect's API handler) would not have the filter. Records
        # are all born in the record factory: redacting there covers every logger and handler.
        if not _factory_installed:
            previous = logging.getLogRecordFactory()

            def redacting_factory(*args, **kwargs) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                _filter.filter(record)
                return record

            logging.setLogRecordFactory(redacting_factory)
            _factory_installed = True
