"""What a registry version holds: the adapter folder wrapped as an MLflow pyfunc model (`chat_pyfunc.py`).

    MLmodel, chat_pyfunc.py, code/tasks/{__init__.py, core/}, artifacts/adapter/<the adapter folder>,
    input_example.json, serving_input_example.json, requirements.txt, ...

Saving is cheap: nothing is loaded (the signature and pip requirements are given, not inferred by
running the model). Fetching a version reads the adapter folder back out of it.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # tasks/
MODEL_CODE = Path(__file__).with_name("chat_pyfunc.py")
ADAPTER_KEY = "adapter"  # the pyfunc artifact holding the adapter folder
ADAPTER_IN_MODEL = Path("artifacts") / ADAPTER_KEY
MLMODEL = "MLmodel"
INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "What is your favorite book?"}]}
PARAMS_EXAMPLE = {"max_tokens": 32, "temperature": 0.0}
PARAM_DEFAULTS = {"max_tokens": 64, "temperature": 0.0}  # chat_pyfunc.DEFAULT_PARAMS says the same
# What serving the model imports; `gguf` reads a pypi: base's GGUF file.
REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "pyyaml", "safetensors")
PYPI_BASE_REQUIREMENTS = ("gguf",)


def chat_signature():
    """Chat messages in (role, content), the reply out; max_tokens and temperature as params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Object, ParamSchema, ParamSpec, Property, Schema

    message = Object([Property("role", DataType.string), Property("content", DataType.string)])
    return ModelSignature(
        inputs=Schema([ColSpec(Array(message), "messages")]),
        outputs=Schema([ColSpec(DataType.string)]),
        params=ParamSchema(
            [
                ParamSpec("max_tokens", DataType.long, PARAM_DEFAULTS["max_tokens"]),
                ParamSpec("temperature", DataType.double, PARAM_DEFAULTS["temperature"]),
            ]
        ),
    )


def _pinned(names: tuple[str, ...]) -> list[str]:
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def save_chat_model(adapter_dir: Path, dest: Path, pypi_base: bool) -> Path:
    """The MLflow model of `adapter_dir`, saved into the new folder `dest`."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="ftllm-model-") as tmp:
        code = Path(tmp) / "tasks"  # only what chat_pyfunc.py imports: the package marker and tasks/core
        shutil.copytree(PACKAGE / "core", code / "core", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(PACKAGE / "__init__.py", code / "__init__.py")
        adapter = Path(tmp) / ADAPTER_KEY
        shutil.copytree(adapter_dir, adapter)
        mlflow.pyfunc.save_model(
            path=str(dest),
            python_model=str(MODEL_CODE),
            artifacts={ADAPTER_KEY: str(adapter)},
            code_paths=[str(code)],
            signature=chat_signature(),
            input_example=(INPUT_EXAMPLE, PARAMS_EXAMPLE),
            pip_requirements=_pinned(REQUIREMENTS + (PYPI_BASE_REQUIREMENTS if pypi_base else ())),
        )
    return dest


def adapter_in(downloaded: Path) -> Path:
    """The adapter folder inside a downloaded version: its MLflow model's artifact, or the download
    itself for a version whose source is a plain adapter folder (registered by hand, say)."""
    return downloaded / ADAPTER_IN_MODEL if (downloaded / MLMODEL).is_file() else downloaded
