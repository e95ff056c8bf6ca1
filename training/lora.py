"""LoRA plumbing shared by the recipes: wrap a model once, and keep a caller's PeftModel as it was.

The TRL trainers change a PeftModel passed to them in ways we do not want:
- DPO/KTO without a ref_model add a frozen "ref" adapter copied from "default", so the reference
  becomes the adapter at the start of this call instead of the adapter-disabled model (the
  checkpoint that produced the traces), and the caller's model grows a second adapter; adding an
  adapter, and leaving `disable_adapter()`, also set `requires_grad` on the active adapter, which
  would unfreeze FFA-LoRA's frozen A matrices. The recipes pass `adapter_disabled_copy(model)` as
  ref_model instead, and `keep_adapter_state` guards the trainer's construction.
- every trainer patches the base model's `forward` with a fused LM head whose closure points at
  the original module (a deep copy would then run the wrong weights): `remove_trl_patches`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from training.config import LoraSettings

if TYPE_CHECKING:  # torch-heavy imports stay inside functions
    from peft import LoraConfig, PeftModel


def lora_config(settings: LoraSettings) -> "LoraConfig":
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias=settings.bias,
        task_type="CAUSAL_LM",
    )


def is_peft_model(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def ensure_lora(model: Any, settings: LoraSettings, *, seed: int) -> "PeftModel":
    """`model` itself when it is already a PeftModel (trained as it is), else `model` wrapped with a
    fresh LoRA adapter (B = 0, so it starts equal to the base). Wrapping changes `model` in place."""
    from peft import get_peft_model
    from transformers import set_seed

    if is_peft_model(model):
        return model
    set_seed(seed)  # LoRA A is drawn at random: same seed, same adapter
    return get_peft_model(model, lora_config(settings))


@contextmanager
def keep_adapter_state(model: "PeftModel") -> Iterator[None]:
    """Around a TRL trainer's construction: afterwards the model has the same adapters, the same
    active adapter and the same trainable parameters as before."""
    adapters = set(model.peft_config)
    active = model.active_adapter
    trainable = {name: param.requires_grad for name, param in model.named_parameters()}
    try:
        yield
    finally:
        for name in [a for a in model.peft_config if a not in adapters]:
            model.delete_adapter(name)
        model.set_adapter(active)  # also resets requires_grad of the active adapter: restored below
        for name, param in model.named_parameters():
            if name in trainable:
                param.requires_grad_(trainable[name])


def remove_trl_patches(model: Any) -> None:
    """Drop TRL's fused-LM-head `forward` patches so the class forward runs again."""
    base = model.get_base_model() if is_peft_model(model) else model
    # functools.wraps renames the patch to "forward"; its code object keeps the real name.
    patch = base.__dict__.get("forward")
    if getattr(getattr(patch, "__func__", None), "__code__", None) is not None and patch.__func__.__code__.co_name == "_fused_forward":
        del base.__dict__["forward"]


def adapter_disabled_copy(model: "PeftModel") -> Any:
    """A plain copy of the model under the adapter: what `model` computes with its adapter disabled.

    DPO/KTO get it as their explicit reference model. Going through TRL's own PEFT path instead would
    either copy the current adapter into a "ref" adapter or call disable_adapter(), whose exit sets
    requires_grad on every LoRA weight of the active adapter (FFA-LoRA's frozen A included)."""
    reference = copy.deepcopy(model).unload()
    remove_trl_patches(reference)
    reference.eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference


def trainable_parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_state_dict(model: "PeftModel") -> dict[str, Any]:
    """The active adapter's tensors (what travels in a federated round), keyed as PEFT saves them."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_adapter_state_dict(model: "PeftModel", state: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"adapter tensors do not fit the model: {unexpected[0]} (and {len(unexpected) - 1} more)")


def describe_adapter(model: "PeftModel") -> dict[str, Any]:
    """The active adapter as the manifest records it (what was trained, not what the config said)."""
    config = model.peft_config[model.active_adapter]
    targets = config.target_modules
    return {
        "r": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "trainable_parameters": trainable_parameter_count(model),
    }
