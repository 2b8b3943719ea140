"""Packaging: the project installs on Python 3.11 (this venv) and 3.12 (CUDA images), by the commands
the Dockerfile runs.

These machines have only Python 3.11, so 3.12 is checked with pip's resolver for a 3.12 target
(`--dry-run --python-version 3.12 --only-binary=:all:`): every pinned wheel of the lock must exist
for cp312. torch is checked through the index listing: its wheel alone is over 500 MB.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
PY312 = ["--python-version", "3.12", "--only-binary=:all:"]


def dockerfile_runs() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return [" ".join(run.split()) for run in re.findall(r"^RUN (.+?)(?<!\\)$", text, flags=re.M | re.S)]


def setup_script_installs() -> list[list[str]]:
    """The `pip install` lines of scripts/setup.sh, as argument lists (what CI and the Dockerfile run)."""
    lines = (ROOT / "scripts/setup.sh").read_text().splitlines()
    installs = [
        line.split("pip install", 1)[1].split()
        for line in lines
        if "pip install" in line and "--upgrade pip" not in line
    ]
    return [[arg for arg in args if arg not in ("-q", "--disable-pip-version-check")] for args in installs]


def test_the_dockerfile_installs_with_ciss_script_on_python_312():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-\w*-?runtime-ubuntu24\.04$", text, flags=re.M)
    assert "PYTHON=python3.12" in text and "python3.12-venv" in text
    assert "bash scripts/setup.sh" in dockerfile_runs()
    assert re.search(r"^USER ftllm$", text, flags=re.M)  # not root
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    liger = next(pin for pin in gpu if pin.startswith("liger-kernel=="))
    assert any(liger in run for run in dockerfile_runs())  # the image's Liger is the extra's pin


def test_pyproject_has_lower_bounds_extras_python_312_and_the_console_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.13"
    assert all(">=" in dep and "==" not in dep for dep in project["dependencies"]), project["dependencies"]
    extras = project["optional-dependencies"]
    assert all("==" in pin for pin in extras["gpu"]) and {"cluster", "weaviate"} <= set(extras)
    assert project["scripts"]["ftllm"] == "flows.cli:main"
    lock = {line.split("==")[0].lower().replace("_", "-") for line in (ROOT / "requirements.lock").read_text().split()}
    for dep in project["dependencies"] + extras["cluster"] + extras["weaviate"]:
        name = re.split(r"[\[<>=;]", dep)[0].lower().replace("_", "-")
        assert name in lock, f"{name} is a dependency but not pinned in requirements.lock"


def test_the_console_script_runs_a_flows_command_line():
    ftllm = Path(sys.executable).parent / "ftllm"
    command = [str(ftllm)] if ftllm.exists() else [sys.executable, "-m", "flows.cli"]
    listed = subprocess.run([*command, "--list"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "lora-finetune" in listed.stdout and "dpo-finetune" in listed.stdout
    helped = subprocess.run(
        [*command, "lora-finetune", "--help-config"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "train.launcher" in helped.stdout and "train.nproc_per_node" in helped.stdout
    unknown = subprocess.run([*command, "no-such-flow"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "unknown flow 'no-such-flow'" in unknown.stderr


@pytest.mark.slow
def test_every_pinned_wheel_exists_for_python_312(tmp_path):
    """The setup script's installs, resolved for a 3.12 target: the lock (but torch), then its --no-deps packages."""
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    without_torch = tmp_path / "lock.txt"
    without_torch.write_text("\n".join(line for line in lock if not line.startswith("torch==")) + "\n")
    by_script = setup_script_installs()
    no_deps = [arg for args in by_script if "--no-deps" in args and "-e" not in args for arg in args if "==" in arg]
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            *PIP,
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            *PY312,
            "--target",
            str(tmp_path / "t"),
            "--report",
            str(report),
            "-r",
            str(without_torch),
            *no_deps,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    resolved = {
        item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]
    }
    assert len(resolved) == len([line for line in without_torch.read_text().split() if "==" in line]) + len(no_deps)
    torch_pin = next(line for line in lock if line.startswith("torch=="))
    listed = subprocess.run([*PIP, "index", "versions", "torch", *PY312], capture_output=True, text=True, timeout=300)
    assert torch_pin.split("==")[1] in listed.stdout.split("Available versions:")[1].split("\n")[0]
