"""The tensors of the rows being decoded together: KV cache, attention mask, positions.

Rows are left-padded, so every row's next token goes in the same (last) column. New rows are
prefilled on their own and merged in (the shorter side is left-padded to a common length), and
rows that finish are sliced out; columns that became padding for every row are trimmed. This
is what lets a request join a batch that is already decoding instead of waiting for it to end.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class KVBatch:
    """One group of rows sharing a KV cache. Row order matches the caller's row list."""

    def __init__(self, cache: DynamicCache, attention_mask: torch.Tensor, positions: torch.Tensor):
        self.cache = cache
        self.attention_mask = attention_mask  # [B, T] long, 1 = real token
        self.positions = positions            # [B] position id of each row's next input token

    @property
    def size(self) -> int:
        return int(self.attention_mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.attention_mask.shape[1])

    def _layers(self) -> list[DynamicLayer]:
        layers = self.cache.layers
        for layer in layers:
            if type(layer) is not DynamicLayer:
                raise NotImplementedError(f"batched decoding supports full-attention caches only, not {type(layer).__name__}")
        return layers

    @classmethod
    def prefill(cls, model: Any, prompts: list[list[int]], pad_id: int) -> tuple["KVBatch", torch.Tensor]:
        """Run the prompts through the model; return the batch and the last-position logits [B, V]."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[i, width - len(prompt) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        positions = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        return cls(cache, attention_mask, positions), out.logits[:, -1, :]

    def step(self, model: Any, next_tokens: list[int]) -> torch.Tensor:
        """Feed one token per row; return the logits of the next one [B, V]."""
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones((self.size, 1))], dim=1)
        out = model(
            input_ids=torch.tensor(next_tokens, dtype=torch.long).unsqueeze(-1),
            attention_mask=self.attention_mask,
            position_ids=self.positions.unsqueeze(-1),
            cache=self.cache,
            use_cache=True,
        )
        self.positions = self.positions + 1
        return out.logits[:, -1, :]

    def merge(self, other: "KVBatch") -> None:
        """Append other's rows after ours, left-padding the shorter side."""
        width = max(self.length, other.length)
        for mine, theirs in zip(self._layers(), other._layers()):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)], dim=0)
        self.attention_mask = torch.cat(
            [_left_pad(self.attention_mask, width, 1), _left_pad(other.attention_mask, width, 1)], dim=0
        )
        self.positions = torch.cat([self.positions, other.positions])

    def select(self, keep: list[int]) -> None:
        """Keep only the rows at `keep` (in that order), then drop all-padding leading columns."""
        index = torch.tensor(keep, dtype=torch.long)
        self.attention_mask = self.attention_mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        real = self.attention_mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else 0
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.attention_mask = self.attention_mask[:, start:]
