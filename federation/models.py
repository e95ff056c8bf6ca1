"""LoRA setup shared by the ServerApp and every ClientApp.

FFA-LoRA (the default): every LoRA A matrix is drawn from a seed all nodes share and frozen;
only B is trained, sent and averaged. Because A is the same everywhere, the mean of the nodes'
updates ΔW_i = s·ΔB_i·A is exactly s·(mean ΔB_i)·A, so averaging B *is* averaging the updates.

A is initialised with orthogonal rows scaled to 1/√3 (the row norm PEFT's kaiming-uniform init
has on average), so A·Aᵀ = I/3 and ‖s·ΔB·A‖_F = (s/√3)·‖ΔB‖_F exactly: norm checks, clipping
and DP noise computed on B are exact statements about the weight update.

Wire names drop PEFT's prefixes: "model.layers.0.self_attn.q_proj.lora_B".
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np

from federation.config import LoraSection
from training.config import LoraSettings

_PREFIX = "base_model.model."
_ADAPTER = ".default"
ROW_NORM = 1.0 / math.sqrt(3.0)


def lora_scale(settings: LoraSettings) -> float:
    return settings.alpha / settings.r


def update_norm_scale(settings: LoraSettings) -> float:
    """‖ΔW‖_F = update_norm_scale · ‖ΔB‖_F for FFA-LoRA with orthogonal A (see module doc)."""
    return lora_scale(settings) * ROW_NORM


def check_lora_settings(settings: LoraSettings) -> None:
    if settings.bias != "none":
        raise ValueError("federated LoRA needs lora.bias = \"none\" (only the A/B matrices travel)")


def wire_name(param_name: str) -> str:
    name = param_name[len(_PREFIX):] if param_name.startswith(_PREFIX) else param_name
    return name.replace(_ADAPTER + ".weight", "").replace(".weight", "")


def _module_seed(seed: int, module_name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{module_name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shared_lora_a(seed: int, module_name: str, r: int, in_features: int) -> np.ndarray:
    """The frozen A of one module: r orthogonal rows of norm 1/√3, the same on every node."""
    rng = np.random.default_rng(_module_seed(seed, module_name))
    gaussian = rng.standard_normal((in_features, r))
    q, upper = np.linalg.qr(gaussian)           # float64, then rounded to float32 below
    q = q * np.sign(np.diag(upper))             # make the factorisation unique
    return (q.T * ROW_NORM).astype(np.float32)


def build_lora_model(model: Any, settings: LoraSettings, section: LoraSection):
    """Wrap `model` in a PEFT LoRA adapter initialised from the shared seed.

    B starts at zero (the model equals its base); A comes from `shared_lora_a`. With ffa, A is
    frozen so the training recipe only updates B."""
    import torch
    from peft import get_peft_model

    from training.lora import lora_config

    check_lora_settings(settings)
    peft_model = get_peft_model(model, lora_config(settings))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_A." in name:
                module = wire_name(name).rsplit(".lora_A", 1)[0]
                values = shared_lora_a(section.seed, module, param.shape[0], param.shape[1])
                param.copy_(torch.from_numpy(values))
                param.requires_grad_(section.aggregation != "ffa")
            elif ".lora_B." in name:
                param.zero_()
                param.requires_grad_(True)
    return peft_model


def travelling_names(peft_model: Any, section: LoraSection) -> list[str]:
    """Wire names of the tensors nodes send: B only with ffa, A and B otherwise."""
    names = []
    for name, _ in peft_model.named_parameters():
        if ".lora_B." in name or (".lora_A." in name and section.aggregation != "ffa"):
            names.append(wire_name(name))
    return sorted(names)


def _params_by_wire_name(peft_model: Any) -> dict[str, Any]:
    return {wire_name(name): param for name, param in peft_model.named_parameters() if ".lora_" in name}


def get_arrays(peft_model: Any, names: list[str]) -> dict[str, np.ndarray]:
    params = _params_by_wire_name(peft_model)
    return {name: params[name].detach().to("cpu").float().numpy().copy() for name in names}


def set_arrays(peft_model: Any, arrays: dict[str, np.ndarray]) -> None:
    import torch

    params = _params_by_wire_name(peft_model)
    unknown = sorted(set(arrays) - set(params))
    if unknown:
        raise ValueError(f"unknown LoRA tensor {unknown[0]!r} (LoRA settings differ between server and node?)")
    with torch.no_grad():
        for name, values in arrays.items():
            param = params[name]
            if tuple(param.shape) != tuple(values.shape):
                raise ValueError(f"{name}: shape {tuple(values.shape)} does not match the model's {tuple(param.shape)}")
            param.copy_(torch.from_numpy(np.asarray(values, dtype=np.float32)).to(param.dtype))


def lora_a_arrays(peft_model: Any) -> dict[str, np.ndarray]:
    """Every A matrix, keyed by module name (wire name without ".lora_A")."""
    return {
        name.rsplit(".lora_A", 1)[0]: values
        for name, values in get_arrays(peft_model, [n for n in _params_by_wire_name(peft_model) if n.endswith(".lora_A")]).items()
    }


def lora_a_digest(peft_model: Any) -> str:
    """sha256 over every frozen A: server and nodes compare it, so a node whose numerics drew a
    different A (another BLAS, another seed) refuses to train instead of corrupting the average."""
    digest = hashlib.sha256()
    for name, values in sorted(lora_a_arrays(peft_model).items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return digest.hexdigest()


def model_num_bytes(model: Any, dtype: str = "float32") -> int:
    """Size of the full checkpoint's weights (what a node would download without LoRA)."""
    per_param = 2 if dtype == "bfloat16" else 4
    # named_parameters() yields tied weights once, like the saved safetensors file holds them.
    return per_param * sum(p.numel() for name, p in model.named_parameters() if ".lora_" not in name)
