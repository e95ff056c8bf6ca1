"""Per-row sampling for a batch: each row has its own temperature, top_p and torch.Generator.

A request's `seed` seeds its rows' generators, so its tokens do not depend on which other
requests share the batch (up to float rounding of batched matmuls).

Sampling draws one uniform number per row and inverts the cumulative distribution; the nucleus
uses topk instead of sorting the whole vocabulary. Both matter on a CPU: torch.multinomial and
a 49k-entry sort cost several milliseconds a token, more than the forward pass of a small model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUCLEUS_FIRST_K = 256


@dataclass
class RowSampling:
    temperature: float          # 0 means greedy
    top_p: float
    generator: torch.Generator | None


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """probs [V] -> the same with everything outside the top_p nucleus zeroed (at least one kept)."""
    size = probs.numel()
    k = min(size, NUCLEUS_FIRST_K)
    while True:
        values, index = probs.topk(k)  # sorted, largest first
        if k == size or float(values.sum()) >= top_p:
            break
        k = min(size, k * 8)
    keep = (values.cumsum(0) - values) < top_p
    kept = torch.zeros_like(probs)
    kept[index[keep]] = values[keep]
    return kept


def sample_row(logits: torch.Tensor, row: RowSampling) -> int:
    probs = torch.softmax(logits.float() / row.temperature, dim=-1)
    if row.top_p < 1.0:
        probs = nucleus(probs, row.top_p)
    cdf = probs.cumsum(0)
    draw = torch.rand(1, generator=row.generator) * cdf[-1]
    # right=True: a zero-probability token never owns the point drawn
    return int(torch.searchsorted(cdf, draw, right=True).clamp(max=cdf.numel() - 1))


def sample_rows(logits: torch.Tensor, rows: list[RowSampling]) -> list[int]:
    """logits [B, V] -> one token id per row (greedy rows take the argmax)."""
    chosen = logits.argmax(dim=-1).tolist()
    for i, row in enumerate(rows):
        if row.temperature > 0:
            chosen[i] = sample_row(logits[i], row)
    return chosen
