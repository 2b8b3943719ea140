"""The configs of both training flows (`lora-finetune`, `dpo-finetune`): every option, documented once.

Both configs start with the same sections (model, data, lora, train, eval, publish); DPO adds `dpo`
and `init_adapter`. Shared keys that scripts and dashboards rely on: `model.name`, `data.train`,
`data.eval`, `train.max_steps`, `lora.r`, `publish.uri`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from tasks.core.config import option, require
from tasks.core.defaults import SMOLLM2_PYPI
from tasks.publishing import ACCEPTED_FORMS, ADAPTER_SCHEMES, ExportOptions, Promote


@dataclass
class ModelOptions:
    name: str = option(
        SMOLLM2_PYPI,
        help="base model: a Hub id, a local folder, or pypi:PACKAGE/FILE.gguf "
        "(weights shipped inside a PyPI package, converted once into the cache)",
    )
    hub_id: str | None = option(
        None,
        help="the base model's Hub id, written into model cards "
        "(found automatically for Hub names and known PyPI models)",
    )
    revision: str | None = option(None, help="Hub revision (branch, tag or commit) of the base model")
    trust_remote_code: bool = option(
        False, help="run model code shipped with the weights (off: safetensors + transformers' own classes only)"
    )
    max_length: int = option(512, help="tokens per training row; longer rows are truncated and counted")

    def __post_init__(self) -> None:
        require(bool(self.name.strip()), "model.name", "must not be empty")
        require(self.max_length >= 16, "model.max_length", f"must be at least 16, got {self.max_length}")


@dataclass
class DataOptions:
    train: str = option(
        "pypi:chatterbot-corpus/english",
        help="training data: a Hub dataset id, a local "
        "json/jsonl/parquet/csv file, or pypi:chatterbot-corpus/LANGUAGE (the offline demo); "
        "dpo-finetune also takes 'feedback': the chat app's judgements as feedback-export wrote them",
    )
    eval: str | None = option(None, help="held-out data, same forms as data.train; default: split off data.train")
    format: Literal["auto", "alpaca", "prompt_completion", "messages", "sharegpt"] = option(
        "auto", help="row format; auto detects it from the columns"
    )
    split: str = option("train", help="split to read from a Hub dataset")
    data_dir: str | None = option(
        None,
        help="folder inside a Hub dataset repo to read (datasets' data_dir), e.g. harmless-base of "
        "Anthropic/hh-rlhf; local files and pypi: sources have none",
    )
    eval_fraction: float = option(0.1, help="share of data.train held out when data.eval is not given")
    max_train_rows: int | None = option(None, help="use at most this many training rows (after the eval split)")
    max_eval_rows: int | None = option(200, help="evaluate on at most this many held-out rows")
    on_bad_rows: Literal["fail", "drop"] = option(
        "fail", help="malformed rows: stop before training with their list (fail), or report and drop them"
    )
    system_prompt: str | None = option(
        None, help="system message put before every example; None keeps the chat template's own default"
    )
    seed: int = option(42, help="seed of the eval split and the shuffling")

    def __post_init__(self) -> None:
        require(0.0 < self.eval_fraction < 1.0, "data.eval_fraction", f"must be in (0, 1), got {self.eval_fraction}")
        if self.data_dir is not None:
            folder = PurePosixPath(self.data_dir)
            require(
                bool(self.data_dir.strip()) and not folder.is_absolute() and ".." not in folder.parts,
                "data.data_dir",
                f"must be a folder inside the dataset repo (relative, no '..'), got {self.data_dir!r}",
            )
        for key in ("max_train_rows", "max_eval_rows"):
            value = getattr(self, key)
            require(value is None or value > 0, f"data.{key}", f"must be positive, got {value}")


@dataclass
class LoraOptions:
    r: int = option(16, help="LoRA rank")
    alpha: int = option(32, help="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = option(0.05, help="dropout on the LoRA input")
    target_modules: list[str] = option(["all-linear"], help="modules to adapt: names, or all-linear")

    def __post_init__(self) -> None:
        require(self.r > 0, "lora.r", f"must be a positive integer, got {self.r}")
        require(self.alpha > 0, "lora.alpha", f"must be positive, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        require(bool(self.target_modules), "lora.target_modules", "must name at least one module")


@dataclass
class TrainOptions:
    max_steps: int = option(100, help="optimizer steps")
    learning_rate: float = option(2e-4, help="peak learning rate")
    lr_scheduler: str = option("cosine", help="transformers scheduler name (cosine, linear, constant, ...)")
    warmup_ratio: float = option(0.05, help="share of steps spent warming up")
    batch_size: int = option(8, help="rows per device batch (packed: sequences per batch)")
    grad_accum: int = option(1, help="gradient accumulation steps")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, help="gradient clipping norm")
    packing: bool = option(True, help="pack rows into full sequences, attention reset per row (the fast path)")
    gradient_checkpointing: Literal["auto", "on", "off"] = option(
        "auto", help="auto: off on the CPU (it only costs time), on for GPUs when memory needs it"
    )
    memory_budget_gb: float | None = option(
        None,
        help="GPU memory a step may use (GiB); gradient_checkpointing=auto turns checkpointing on only "
        "when a measured step would not fit (default: 90% of the GPU)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", help="auto: fp32 on the CPU, bf16 on GPUs that support it"
    )
    device: Literal["auto", "cpu", "cuda"] = option("auto", help="where to train")
    liger: Literal["auto", "on", "off"] = option("auto", help="Liger fused kernels: auto = on CUDA when installed")
    torch_compile: bool = option(False, help="compile the model with torch.compile")
    num_threads: int | None = option(None, help="CPU threads for torch (default: torch's choice)")
    logging_steps: int = option(5, help="log the training loss every N steps")
    save_steps: int = option(25, help="write a checkpoint every N steps")
    save_total_limit: int = option(2, help="checkpoints kept on disk")
    resume: bool = option(True, help="resume from the last checkpoint of the same config, if any")
    output_dir: str | None = option(None, help="checkpoint folder; default: one per config under FTLLM_DATA_DIR")
    checkpoint_uri: str | None = option(
        None,
        help="also keep each checkpoint at this fsspec URL (s3://bucket/prefix; endpoint and keys from "
        "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...): a rerun on another machine resumes from there",
    )
    seed: int = option(42, help="training seed")
    launcher: Literal["local", "torchrun"] = option(
        "local",
        help="local: train in the flow's own process; torchrun: start torchrun on "
        "tasks.training.distributed_entry (one process per device, DDP or FSDP)",
    )
    strategy: Literal["ddp", "fsdp"] = option(
        "ddp", help="with torchrun: ddp (a full copy per process) or fsdp (weights sharded over processes)"
    )
    nproc_per_node: int = option(
        1,
        help="with torchrun: training processes on this machine (at most one per device); the environment "
        "variable NPROC_PER_NODE, which the cluster job templates set from the job's GPUs, takes precedence",
    )
    nnodes: int = option(1, help="with torchrun: machines taking part; more than 1 needs train.rdzv_endpoint")
    node_rank: int = option(0, help="with torchrun: this machine's number among train.nnodes (0 hosts the rendezvous)")
    rdzv_endpoint: str | None = option(
        None, help="with torchrun and nnodes > 1: HOST:PORT of the rendezvous every machine joins (node 0's address)"
    )
    rdzv_timeout: int = option(900, help="with torchrun: seconds a machine waits for the others at the rendezvous")

    def __post_init__(self) -> None:
        self._check_launcher()
        require(self.max_steps > 0, "train.max_steps", f"must be a positive integer, got {self.max_steps}")
        require(self.learning_rate > 0, "train.learning_rate", f"must be positive, got {self.learning_rate}")
        require(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.batch_size > 0, "train.batch_size", f"must be positive, got {self.batch_size}")
        require(self.grad_accum > 0, "train.grad_accum", f"must be positive, got {self.grad_accum}")
        require(self.logging_steps > 0, "train.logging_steps", f"must be positive, got {self.logging_steps}")
        require(self.save_steps > 0, "train.save_steps", f"must be positive, got {self.save_steps}")
        require(
            self.memory_budget_gb is None or self.memory_budget_gb > 0,
            "train.memory_budget_gb",
            f"must be positive, got {self.memory_budget_gb}",
        )
        require(
            self.num_threads is None or self.num_threads > 0,
            "train.num_threads",
            f"must be positive, got {self.num_threads}",
        )

    def _check_launcher(self) -> None:
        """Launcher options that cannot fit together are refused before anything starts."""
        for key in ("nproc_per_node", "nnodes", "rdzv_timeout"):
            require(getattr(self, key) > 0, f"train.{key}", f"must be positive, got {getattr(self, key)}")
        require(
            0 <= self.node_rank < self.nnodes,
            "train.node_rank",
            f"must be in [0, train.nnodes={self.nnodes}), got {self.node_rank}",
        )
        if self.launcher == "local":
            distributed = self.nproc_per_node > 1 or self.nnodes > 1 or self.strategy != "ddp"
            require(not distributed, "train.launcher", "is local (one process); set train.launcher=torchrun")
            return
        processes = self.nproc_per_node * self.nnodes
        require(
            self.strategy != "fsdp" or processes > 1,
            "train.strategy",
            "fsdp shards the model over processes and needs more than one "
            "(train.nproc_per_node * train.nnodes); use ddp for one process",
        )
        require(
            self.nnodes == 1 or bool(self.rdzv_endpoint),
            "train.rdzv_endpoint",
            f"must be HOST:PORT of node 0 when train.nnodes={self.nnodes}",
        )
        if self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            require(
                bool(host) and port.isdigit(),
                "train.rdzv_endpoint",
                f"must be HOST:PORT, got {self.rdzv_endpoint!r}",
            )


@dataclass
class EvalOptions:
    sample_prompts: list[str] = option(
        ["What is your favorite book?", "Do you like music?", "Tell me about computers."],
        help="fixed prompts generated from by the base and the adapter, side by side",
    )
    max_new_tokens: int = option(48, help="tokens generated per sample prompt")
    batch_size: int = option(8, help="rows per evaluation batch")


@dataclass
class PublishOptions:
    uri: str = option(
        "mlflow://smollm2-chatterbot-lora",
        help=f"where the adapter goes: {ACCEPTED_FORMS}; each run publishes a new commit, version or copy",
    )
    private: bool = option(True, help="create Hub repos private")
    token_secret: str | None = option(None, help="Prefect Secret block holding the Hub token (else HF_TOKEN)")
    verify: bool = option(True, help="reload the published adapter and verify tensors and logits")
    promote: Promote = option(
        "auto",
        help="the @champion alias (a model registry target only) after a verified publish: auto moves it to the "
        "new version when its held-out score (SFT eval loss, DPO reward accuracy) is at least as good as "
        "the champion's on the same data; always moves it; never leaves it",
    )
    logits_tolerance: float | None = option(
        None,
        help="max abs logit difference accepted by verification; default per training precision: "
        "1e-4 in fp32, 0.0625 in fp16, 0.5 in bf16 (two rounding steps of a logit of 32 to 64)",
    )
    # GGUF / Ollama export of the published adapter (publish.export.gguf=true), logged as run artifacts.
    export: ExportOptions = field(default_factory=ExportOptions)

    def __post_init__(self) -> None:
        require(
            self.logits_tolerance is None or self.logits_tolerance > 0, "publish.logits_tolerance", "must be positive"
        )


# The sections every training config starts with, in the order `--help-config` lists them.
SHARED_SECTIONS: dict[str, type] = {
    "model": ModelOptions,
    "data": DataOptions,
    "lora": LoraOptions,
    "train": TrainOptions,
    "eval": EvalOptions,
    "publish": PublishOptions,
}


def training_config(cls: type) -> type:
    """A dataclass of the shared sections (the same keys in both flows), then the class's own fields."""
    own = inspect.get_annotations(cls)
    cls.__annotations__ = {**SHARED_SECTIONS, **own}
    for name, section in SHARED_SECTIONS.items():
        setattr(cls, name, field(default_factory=section))
    return dataclass(cls)


@training_config
class LoraFinetuneConfig:
    """`lora-finetune`: dataset → base model → freeze + LoRA → train → evaluate → publish → verify.

    The shared sections only: model, data, lora, train, eval, publish.
    """


# The loss types of TRL 1.16 that work on plain preference pairs (no extra columns or settings).
LossType = Literal[
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "bco_pair",
    "sppo_hard",
    "nca_pair",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]


@dataclass
class DpoOptions:
    beta: float = option(0.1, help="how far the policy may move from the reference (IPO: the regularizer tau)")
    loss_type: LossType = option("sigmoid", help="TRL loss: sigmoid (the DPO paper), ipo, hinge, robust, ...")
    precompute_ref_log_probs: bool = option(
        False, help="score every pair with the reference once, before training, instead of once per step"
    )
    max_prompt_tokens: int = option(
        256,
        help="prompts longer than this lose their oldest turns first; a pair "
        "whose last user turn alone is longer is reported and dropped",
    )
    min_reward_accuracy: float = option(
        0.5, help="quality gate: publish only when the held-out reward accuracy beats this and the untrained policy's"
    )

    def __post_init__(self) -> None:
        require(self.beta > 0, "dpo.beta", f"must be positive, got {self.beta}")
        require(
            self.max_prompt_tokens >= 8, "dpo.max_prompt_tokens", f"must be at least 8, got {self.max_prompt_tokens}"
        )
        require(
            0.0 <= self.min_reward_accuracy < 1.0,
            "dpo.min_reward_accuracy",
            f"must be in [0, 1), got {self.min_reward_accuracy}",
        )


@training_config
class DpoFinetuneConfig:
    """`dpo-finetune`: preference pairs → policy (+ optional SFT adapter) → LoRA → DPO → evaluate → gate → publish → verify."""

    dpo: DpoOptions = field(default_factory=DpoOptions)
    init_adapter: str | None = option(
        None,
        help=f"start from a published adapter ({ADAPTER_SCHEMES} URI, e.g. a lora-finetune SFT adapter); "
        "it is also the reference",
    )

    def __post_init__(self) -> None:
        require(self.data.format == "auto", "data.format", "preference rows are detected per row; leave it at auto")
        require(
            self.dpo.max_prompt_tokens < self.model.max_length,
            "dpo.max_prompt_tokens",
            f"must be smaller than model.max_length={self.model.max_length} to leave room for the replies",
        )
