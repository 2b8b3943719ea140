"""The work of every flow, as plain functions: each module is one concern.

Importing this package switches off the phone-home features of the libraries we use, before any
of them is imported, so that a run never tries to reach the internet on its own.
"""

import os

_QUIET_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "0"),
    "TOKENIZERS_PARALLELISM": "false",
    "ANONYMIZED_TELEMETRY": "False",
    # A flow run outside a server starts a temporary Prefect server; 20 s is too short on a busy CPU.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    # MLflow 3 starts a job runner beside its server by default (3 GB, 25 s); we never use it.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
for _name, _value in _QUIET_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
