"""How a run tells its story in the Prefect UI, and which failures are worth a retry."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from tasks.core.config import ConfigError


def markdown_cell(value: Any) -> str:
    """`value` as the text of one markdown table cell: pipes escaped, flattened to one line."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cell text is flattened to one line."""
    lines = ["| " + " | ".join(markdown_cell(h) for h in headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def failure_markdown(run: Any) -> str:
    """What the run got done before it failed, and why it failed.

    `run`: a flow's result dataclass with `flow` and `error`; the parts the run had not reached
    yet are None and left out.
    """
    story = {k: v for k, v in dataclasses.asdict(run).items() if v is not None}
    done = {k: v for k, v in story.items() if k not in ("error", "flow")}
    return (
        f"# {story['flow']}: FAILED\n\n**Reason:** {story.get('error', 'unknown')}\n\n"
        f"## What the run got done\n\n```json\n{json.dumps(done, indent=2, default=str)[:20000]}\n```"
    )


def publish_summary(flow: str, markdown: str) -> None:
    """The run's summary artifact in the Prefect UI (a no-op outside a Prefect run)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    create_markdown_artifact(key=f"{flow}-summary", markdown=markdown, description=f"{flow} run summary")


def retry_on_io(task, task_run, state) -> bool:
    """Retry network and disk hiccups; never retry a config or data error (it would fail the same way)."""
    try:
        state.result(raise_on_failure=True)
    except (ConfigError, ValueError, TypeError, KeyError):
        return False
    except Exception:
        return True
    return False
