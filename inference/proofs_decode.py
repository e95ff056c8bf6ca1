"""A reference KV-cache decode loop with an activation proof, for tests, the benchmark and as the
pattern the engine follows: a forward hook on `model.model.norm` hands each step's rows to a
ProofBuilder (prefill rows first, then one row per decode step; the last sampled token is not fed).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from inference.proofs import ActivationProof, ProofBuilder


@contextmanager
def norm_hook(model, callback: Callable) -> Iterator[None]:
    """Call `callback(states)` with the final norm's output ([batch, seq, hidden]) on every forward."""
    handle = model.model.norm.register_forward_hook(lambda _module, _inputs, output: callback(output))
    try:
        yield
    finally:
        handle.remove()


@dataclass
class DecodeResult:
    reply_ids: list[int]
    proof: ActivationProof | None
    seconds: float                  # wall time of the whole decode (proof building included)
    proof_seconds: float            # time spent in the hook and the ProofBuilder


def _next_token(logits, temperature: float, top_p: float, generator) -> int:
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def decode(model, prompt_ids: Sequence[int], max_new_tokens: int, *, prove: bool = True,
           cover_last: bool = False, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
           eos_token_id: int | None = None) -> DecodeResult:
    """Generate up to `max_new_tokens` for one prompt with a DynamicCache, one token per step.

    With `cover_last` (and `prove`) the last sampled token is fed once more so that the proof
    covers every reply token (one extra decode step, counted in the proof's cost)."""
    import torch
    from transformers import DynamicCache

    generator = torch.Generator().manual_seed(seed)
    builder = ProofBuilder(len(prompt_ids)) if prove else None
    hook_seconds = 0.0

    def on_norm(states) -> None:
        nonlocal hook_seconds
        start = time.perf_counter()
        builder.add_hidden(states[0])
        hook_seconds += time.perf_counter() - start

    reply: list[int] = []
    started = time.perf_counter()
    hook = norm_hook(model, on_norm) if prove else _nullcontext()
    with torch.inference_mode(), hook:
        cache = DynamicCache()
        step_input = torch.tensor([list(prompt_ids)], dtype=torch.long)
        for _ in range(max_new_tokens):
            out = model(input_ids=step_input, cache=cache, use_cache=True, logits_to_keep=1)
            token = _next_token(out.logits[0, -1], temperature, top_p, generator)
            reply.append(token)
            if token == eos_token_id or len(reply) == max_new_tokens:
                break
            step_input = torch.tensor([[token]], dtype=torch.long)
        if prove and cover_last:
            before, extra = hook_seconds, time.perf_counter()
            model(input_ids=torch.tensor([[reply[-1]]], dtype=torch.long), cache=cache, use_cache=True,
                  logits_to_keep=1)
            hook_seconds = before + time.perf_counter() - extra    # the whole extra step is proof cost
    proof = None
    if builder is not None:
        start = time.perf_counter()
        proof = builder.finish()
        hook_seconds += time.perf_counter() - start
    return DecodeResult(reply, proof, time.perf_counter() - started, hook_seconds)


@contextmanager
def _nullcontext() -> Iterator[None]:
    yield
