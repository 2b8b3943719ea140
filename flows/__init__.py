"""The Prefect flows, one module each, with their command lines.

`tasks` is imported here, before any flow module imports Prefect: Prefect reads its settings once,
when it is first imported, so the project's defaults (tasks/__init__.py) must be set before that.
"""

import tasks  # noqa: F401
