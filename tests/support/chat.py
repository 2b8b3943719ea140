"""Fixtures of the chat-app tests: a served app on 127.0.0.1 with small local models.

- `slow_model_dir`: the tiny model's tokenizer on a deeper (16-layer) random model that never
  emits an end-of-sequence token, so a long reply reliably runs for seconds and Stop lands mid-reply.
- `broken_model_dir`: a model folder whose config.json is corrupt: loading it fails.
- `chat_model_dir`: the tiny test model, made to reply with exactly max_new_tokens tokens.
- `chat_server`: the real app (tasks.chat.ui.build_app + tasks.chat.server.launch) serving these three models.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def build_slow_model(tokenizer_dir: Path, folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = None  # never ends on its own: only max_new_tokens or Stop
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def never_ending(model_dir: Path, folder: Path) -> Path:
    """A copy of a model that does not stop at its end-of-sequence token.

    A random tiny model samples that token first now and then (a few % with top-k 50), and an empty
    reply would make a browser test wait for a message that never comes.
    """
    import json
    import shutil

    if not (folder / "config.json").is_file():
        shutil.copytree(model_dir, folder)
        for name in ("config.json", "generation_config.json"):
            path = folder / name
            if path.is_file():
                config = json.loads(path.read_text())
                config["eos_token_id"] = None
                path.write_text(json.dumps(config, indent=2))
    return folder


@dataclass
class ChatServer:
    url: str
    port: int
    app: object
    service: object  # tasks.chat.service.ChatService
    tiny: str
    slow: str
    broken: str
