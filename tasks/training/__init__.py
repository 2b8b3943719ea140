"""Training: instruction and preference data, LoRA, SFT and DPO with TRL, evaluation, run reports.

Other areas use only what is named here.
"""

from tasks.training.lora import freeze_and_apply_lora

__all__ = ["freeze_and_apply_lora"]
