"""`tiny-random`: a 2-layer random Llama with the SmolLM2 tokenizer (3.2 M params), for tests.

Seeded, so every machine with the same torch builds the same weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from inference.embedded import ensure_tokenizer
from inference.home import materialize_folder, models_cache

TINY_RANDOM_FOLDER = "tiny-random-llama"


def _build(tmp: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer_dir = ensure_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(tmp)
    for item in tokenizer_dir.iterdir():
        shutil.copy2(item, tmp / item.name)


def ensure_tiny_random() -> Path:
    return materialize_folder(models_cache() / TINY_RANDOM_FOLDER, _build)
