"""A stand-in for liger-kernel on the CPU: it patches a Qwen2 model the way liger-kernel 0.8.5 does.

liger-kernel's kernels are Triton, so CUDA only, and the package is not installed here. This double
installs `liger_kernel.transformers._apply_liger_kernel_to_instance` with the real one's effects
for Qwen2: it rebinds names in transformers' `modeling_qwen2` (the RoPE function, the norm and MLP
classes) and patches the instance's norms and MLPs. Its "kernels" run transformers' own code and
count their calls, so a test can tell which model ran Liger and which did not.

    liger = install(monkeypatch)      # restores modeling_qwen2 and sys.modules after the test
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

REBOUND = ("apply_rotary_pos_emb", "Qwen2RMSNorm", "Qwen2MLP")


@dataclass
class FakeLiger:
    calls: dict[str, int] = field(default_factory=lambda: {"rms_norm": 0, "swiglu": 0, "rope": 0})
    applied: list[dict[str, bool]] = field(default_factory=list)  # the flags of every application

    def apply_to_instance(
        self,
        model,
        rope: bool = True,
        cross_entropy: bool = False,
        fused_linear_cross_entropy: bool = True,
        rms_norm: bool = True,
        swiglu: bool = True,
    ) -> None:
        from transformers.models.qwen2 import modeling_qwen2

        self.applied.append(
            dict(
                rope=rope,
                cross_entropy=cross_entropy,
                fused_linear_cross_entropy=fused_linear_cross_entropy,
                rms_norm=rms_norm,
                swiglu=swiglu,
            )
        )
        if rope:
            modeling_qwen2.apply_rotary_pos_emb = self._counted("rope", modeling_qwen2.apply_rotary_pos_emb)
        if rms_norm:
            modeling_qwen2.Qwen2RMSNorm = self._counted_class("LigerRMSNorm", modeling_qwen2.Qwen2RMSNorm, "rms_norm")
        if swiglu:
            modeling_qwen2.Qwen2MLP = self._counted_class("LigerSwiGLUMLP", modeling_qwen2.Qwen2MLP, "swiglu")
        base = getattr(model, model.base_model_prefix, model)
        norms = [base.norm] + [
            n for layer in base.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        for norm in norms if rms_norm else []:
            self._patch_forward(norm, "rms_norm")
        for layer in base.layers if swiglu else []:
            self._patch_forward(layer.mlp, "swiglu")

    def _counted(self, kernel: str, function):
        def counted(*args, **kwargs):
            self.calls[kernel] += 1
            return function(*args, **kwargs)

        return counted

    def _counted_class(self, name: str, base: type, kernel: str) -> type:
        """What liger puts in place of a transformers class: every later model of the family runs it."""

        def forward(instance, *args, **kwargs):
            self.calls[kernel] += 1
            return base.forward(instance, *args, **kwargs)

        return type(name, (base,), {"forward": forward})

    def _patch_forward(self, module, kernel: str) -> None:
        forward = type(module).forward

        def patched(instance, *args, **kwargs):
            self.calls[kernel] += 1
            return forward(instance, *args, **kwargs)

        module.__dict__["forward"] = types.MethodType(patched, module)


def install(monkeypatch) -> FakeLiger:
    """Make `import liger_kernel.transformers` find the double for this test."""
    from transformers.models.qwen2 import modeling_qwen2

    for name in REBOUND:  # whatever the code under test does, the next test sees transformers' own
        monkeypatch.setattr(modeling_qwen2, name, getattr(modeling_qwen2, name))
    liger = FakeLiger()
    package = types.ModuleType("liger_kernel")
    transformers_module = types.ModuleType("liger_kernel.transformers")
    transformers_module._apply_liger_kernel_to_instance = liger.apply_to_instance
    package.transformers = transformers_module
    monkeypatch.setitem(sys.modules, "liger_kernel", package)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", transformers_module)
    return liger
