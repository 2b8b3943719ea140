"""A registered adapter as an MLflow model: its base model plus the LoRA adapter, answering chat messages.

MLflow's "models from code": `registry_model.save_chat_model` copies this file into every registered
version, and `mlflow.pyfunc.load_model("models:/NAME@champion")` or `mlflow models serve` runs it.
The project's `tasks/core` travels with it (the model's code_paths), so the base model is resolved
(a Hub id, or a `pypi:` name converted once into the model cache) and the chat template rendered
exactly as in training and in the chat app.

Input: `{"messages": [{"role": "user", "content": "..."}]}` (one row per conversation); params
`max_tokens` and `temperature` (0: greedy). Output: the assistant's reply, one string per row.
The model_config key `base_model` overrides the base named in adapter_config.json (a local mirror).
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

# The signature's defaults (registry_model.PARAM_DEFAULTS), for a caller that bypasses the signature.
DEFAULT_PARAMS = {"max_tokens": 64, "temperature": 0.0}


class AdapterChatModel(PythonModel):
    def load_context(self, context) -> None:
        import json
        from pathlib import Path

        from peft import PeftModel

        from tasks.core.models import load_base_model, resolve_placement

        folder = Path(context.artifacts["adapter"])
        named = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        self.base_model = (context.model_config or {}).get("base_model") or named
        base, self.tokenizer, _ = load_base_model(self.base_model, resolve_placement())
        self.model = PeftModel.from_pretrained(base, str(folder), is_trainable=False).eval()

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        settings = {**DEFAULT_PARAMS, **(params or {})}
        if hasattr(model_input, "to_dict"):  # the pandas DataFrame pyfunc builds from the input
            rows = model_input.to_dict(orient="records")
        else:
            rows = model_input if isinstance(model_input, list) else [model_input]
        return [self._reply(list(row["messages"]), settings) for row in rows]

    def _reply(self, messages: list[dict], settings: dict[str, Any]) -> str:
        import torch

        from tasks.core.models import chat_template_ids

        turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        device = next(self.model.parameters()).device
        ids = torch.tensor([chat_template_ids(self.tokenizer, turns)], device=device)
        temperature = float(settings["temperature"])
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=int(settings["max_tokens"]),
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        return self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


mlflow.models.set_model(AdapterChatModel())
