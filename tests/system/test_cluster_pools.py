"""The GPU deployments against a real Prefect server: work pools from the project's templates,
`prefect deploy`, a run with `--job-variable gpu_limit=4`, rendered by prefect-kubernetes (and
prefect-docker) exactly as their workers would, validated against the Kubernetes API models.

No cluster runs here: what a worker would submit is rendered and checked instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
IMAGE = "registry.example.com/team/finetuning-llm:2026.12"
GPU_DEPLOYMENTS = ["lora-finetune/lora-finetune-gpu", "dpo-finetune/dpo-finetune-gpu"]

pytestmark = pytest.mark.slow


def prefect(args: list[str], env: dict) -> str:
    done = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def render(pool_name: str, flow_run_id: str, configuration_class, api_url: str):
    """The job configuration the pool's worker would build for this flow run."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def resolve():
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            pool = await client.read_work_pool(pool_name)
            return await configuration_class.resolve_for_flow_run(
                flow_run, client=client, work_pool=pool, worker_name="render-check"
            )

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(resolve())


def read_server(api_url: str, pool_name: str, deployment_names: list[str]):
    """(work pool, {name: deployment}) as the server holds them."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def read():
        async with get_client() as client:
            pool = await client.read_work_pool(pool_name)
            return pool, {name: await client.read_deployment_by_name(name) for name in deployment_names}

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return asyncio.run(read())


def dropped_keys(original, parsed, path: str = "") -> list[str]:
    """Keys of the manifest the Kubernetes models do not know (they would silently drop them)."""
    if isinstance(original, dict):
        missing = [f"{path}.{key}" for key in original if original[key] is not None and key not in (parsed or {})]
        return missing + [
            found
            for key, value in original.items()
            if key in (parsed or {})
            for found in dropped_keys(value, parsed[key], f"{path}.{key}")
        ]
    if isinstance(original, list):
        return [found for i, item in enumerate(original) for found in dropped_keys(item, parsed[i], f"{path}[{i}]")]
    return []


def as_v1_job(manifest: dict):
    """The manifest parsed into the Kubernetes client's V1Job model, and that model serialized back."""
    from kubernetes_asyncio.client import ApiClient

    class Response:  # ApiClient.deserialize reads an HTTP response's body
        data = json.dumps(manifest)

    async def parse():
        async with ApiClient() as api:  # its HTTP session needs a running event loop; nothing is sent
            job = api.deserialize(Response(), "V1Job")
            return job, api.sanitize_for_serialization(job)

    return asyncio.run(parse())


def test_gpu_deployments_render_a_valid_kubernetes_job(prefect_server):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    env = {**os.environ, **prefect_server, "FTLLM_PROJECT_DIR": str(ROOT)}
    template = "deployments/k8s/base-job-template.json"
    prefect(["work-pool", "create", "gpu-k8s", "--type", "kubernetes", "--base-job-template", template], env)
    prefect(["work-pool", "set-concurrency-limit", "gpu-k8s", "1"], env)  # GPU runs queue, one at a time
    prefect(["--no-prompt", "deploy", "--name", "lora-finetune-gpu", "--name", "dpo-finetune-gpu"], env)
    (Path(prefect_server["PREFECT_HOME"]) / "gpu-deployed").touch()
    pool, deployments = read_server(prefect_server["PREFECT_API_URL"], "gpu-k8s", GPU_DEPLOYMENTS)
    assert pool.concurrency_limit == 1 and pool.type == "kubernetes"
    assert {d.work_pool_name for d in deployments.values()} == {"gpu-k8s"}
    assert all(d.parameters["overrides"] == ["train.launcher=torchrun"] for d in deployments.values())

    started = prefect(
        [
            "deployment",
            "run",
            "lora-finetune/lora-finetune-gpu",
            "--job-variable",
            "gpu_limit=4",
            "--job-variable",
            f"image={IMAGE}",
        ],
        env,
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)
    config = render("gpu-k8s", flow_run_id, KubernetesWorkerJobConfiguration, prefect_server["PREFECT_API_URL"])
    manifest = config.job_manifest

    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["image"] == IMAGE
    variables = {item["name"]: item.get("value") for item in container["env"]}
    assert variables["NPROC_PER_NODE"] == "4"  # what the launcher starts torchrun with
    assert variables["FTLLM_DATA_DIR"] == "/data" and variables["PREFECT__FLOW_RUN_ID"] == flow_run_id
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {v["name"] for v in pod["volumes"]} == {"ftllm-data", "dshm"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/dev/shm"}
    assert container["args"][:3] == ["prefect", "flow-run", "execute"]

    job, parsed = as_v1_job(manifest)
    assert dropped_keys(manifest, parsed) == []  # Prefect's own default fails here (completions in the pod spec)
    assert job.spec.completions == 1 and job.spec.parallelism == 1 and job.spec.backoff_limit == 0
    assert job.spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "4"
    assert job.spec.template.spec.restart_policy == "Never"

    # The deployment's parameters turn the launcher on; NPROC_PER_NODE sets its process count.
    from tasks.core.config import load_config
    from tasks.training.config import LoraFinetuneConfig
    from tasks.training.launcher import from_environment

    overrides = deployments["lora-finetune/lora-finetune-gpu"].parameters["overrides"]
    options = load_config(LoraFinetuneConfig, ROOT / "configs/lora_demo.yaml", overrides).train
    os.environ["NPROC_PER_NODE"] = variables["NPROC_PER_NODE"]
    try:
        assert from_environment(options).nproc_per_node == 4 and options.launcher == "torchrun"
    finally:
        del os.environ["NPROC_PER_NODE"]


def test_docker_pool_variant_passes_the_gpus_as_device_requests(prefect_server):
    from prefect_docker.worker import DockerWorkerJobConfiguration

    env = {**os.environ, **prefect_server, "FTLLM_PROJECT_DIR": str(ROOT)}
    template = "deployments/docker/base-job-template.json"
    prefect(["work-pool", "create", "gpu-docker", "--type", "docker", "--base-job-template", template], env)
    deployment = "lora-finetune/lora-finetune-gpu"
    if not (Path(prefect_server["PREFECT_HOME"]) / "gpu-deployed").exists():  # this session's other test deploys
        prefect(["--no-prompt", "deploy", "--name", "lora-finetune-gpu"], env)
    started = prefect(
        ["deployment", "run", deployment, "--job-variable", "gpu_count=2", "--job-variable", "nproc_per_node=2"], env
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started).group(1)
    # The Docker worker reads the pool it is started on; render this run against the Docker pool.
    config = render("gpu-docker", flow_run_id, DockerWorkerJobConfiguration, prefect_server["PREFECT_API_URL"])
    kwargs = config.container_create_kwargs
    assert kwargs["device_requests"] == [{"Driver": "nvidia", "Count": 2, "Capabilities": [["gpu"]]}]
    assert config.env["NPROC_PER_NODE"] == "2" and config.env["FTLLM_DATA_DIR"] == "/data"

    import docker.types

    request = docker.types.DeviceRequest(**{k.lower(): v for k, v in kwargs["device_requests"][0].items()})
    assert request == {"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
