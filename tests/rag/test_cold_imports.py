"""A RAG command's imports stay light: the model libraries are imported only where a model runs.

Importing torch and transformers costs tens of seconds on a loaded machine, and every
`python -m flows.pdf_index` pays its imports before it can find that nothing changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_LIBRARIES = ("torch", "transformers", "peft", "trl", "sentence_transformers", "mlflow")
SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

# One process for both commands' imports: each fresh interpreter pays Prefect's import again.
CODE = f"""
import json, sys
import flows.pdf_index, flows.rag_query
from prefect.settings import {SETTING}
print(json.dumps({{"modules": sorted(sys.modules), "timeout": {SETTING}.value()}}))
"""


def test_the_rag_commands_import_no_model_library_but_pymilvus_and_see_the_projects_prefect_defaults():
    env = {k: v for k, v in os.environ.items() if k != SETTING}
    done = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert {"flows.pdf_index", "flows.rag_query", "prefect"} <= set(seen["modules"])
    assert [name for name in MODEL_LIBRARIES if name in seen["modules"]] == []
    # pymilvus sets up logging when imported; imported inside a flow run it stalls the run for
    # Prefect's 5 s log-flush timeout (tasks/rag/stores/milvus.py): it must come with the command.
    assert "pymilvus" in seen["modules"]
    # Prefect reads its settings once, at its first import: the project's default (tasks/__init__.py,
    # a startup timeout that the temporary server needs on a busy machine) must be in place by then.
    assert seen["timeout"] == 180
