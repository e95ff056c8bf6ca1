"""Load a model reference into a transformers model + tokenizer, with its identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inference.model_refs import ResolvedModel, resolve_model_ref

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelIdentity:
    """What a node says it serves: reported in /v1/models, /metrics and every trace."""

    ref: str
    version: str
    weights_sha256: str


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    identity: ModelIdentity
    resolved: ResolvedModel
    dtype: str


def load_tokenizer(ref: str | ResolvedModel):
    from transformers import AutoTokenizer

    resolved = resolve_model_ref(ref) if isinstance(ref, str) else ref
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(ref: str | ResolvedModel, dtype: str = "float32") -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    resolved = resolve_model_ref(ref) if isinstance(ref, str) else ref
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=getattr(torch, dtype))
    model.eval()
    tokenizer = load_tokenizer(resolved)
    identity = ModelIdentity(ref=resolved.ref, version=resolved.version, weights_sha256=resolved.weights_sha256)
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, resolved=resolved, dtype=dtype)
