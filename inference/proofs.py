"""Activation proofs: TOPLOC-style commitments to the final norm's hidden states, and their verifier.

Generation side: the engine hands a ProofBuilder the output rows of `model.model.norm` in position
order (the prompt's rows from the prefill, then one row per decode step) and calls `finish()`.
The rows are cut into chunks (the prompt, then every 32 positions); each chunk's top-128 |values|
become one 258-byte polynomial commitment (inference/proofs_poly.py).

Which positions: a decode loop feeds the prompt and every generated token except the last (the
last one is sampled, never fed), so a proof normally covers prompt_len + reply_len - 1 positions,
as in TOPLOC. The last reply token is then bound only by a plausibility check (its probability
under the claimed model at the last covered position). An engine may feed it too (one more step);
the proof then covers prompt_len + reply_len positions and needs no such check.

Verifier side: one prefill of prompt + reply on the claimed model; each chunk's own top-k indices
are looked up in the commitment and the bf16 sign/exponent and mantissa compared with what the
prover committed (thresholds in ProofThresholds, calibrated on this CPU by bench/bench_integrity.py).
"""

from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from inference.proofs_poly import ProofFormatError, encode_chunk, open_chunk

SCHEME = "toploc-gf65497-v1"
CHUNK_TOKENS = 32
TOP_K = 128
PROOF_DTYPES = ("float32", "bfloat16")


class ProofError(ValueError):
    """A proof that cannot be built or parsed (not a verification failure: see VerificationResult)."""


@dataclass
class ActivationProof:
    """The proof of one completion choice. `to_dict()` is what a trace stores (JSON-safe)."""

    prompt_len: int
    positions: int                      # hidden-state rows covered, from position 0
    chunks: list[bytes]
    dtype: str = "float32"              # the dtype the hidden states were computed in
    chunk_tokens: int = CHUNK_TOKENS
    top_k: int = TOP_K
    scheme: str = SCHEME

    @property
    def nbytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "prompt_len": self.prompt_len,
            "positions": self.positions,
            "chunk_tokens": self.chunk_tokens,
            "top_k": self.top_k,
            "dtype": self.dtype,
            "chunks": [base64.b64encode(chunk).decode("ascii") for chunk in self.chunks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ActivationProof":
        try:
            if data["scheme"] != SCHEME:
                raise ProofError(f"unknown proof scheme {data['scheme']!r} (expected {SCHEME})")
            return cls(
                prompt_len=int(data["prompt_len"]),
                positions=int(data["positions"]),
                chunks=[base64.b64decode(chunk, validate=True) for chunk in data["chunks"]],
                dtype=str(data["dtype"]),
                chunk_tokens=int(data["chunk_tokens"]),
                top_k=int(data["top_k"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ProofError):
                raise
            raise ProofError(f"not an activation proof ({exc.__class__.__name__}: {exc})") from None


def chunk_bounds(prompt_len: int, positions: int, chunk_tokens: int = CHUNK_TOKENS) -> list[tuple[int, int]]:
    """[start, end) row ranges: the prompt, then every `chunk_tokens` positions (the last may be short)."""
    if prompt_len < 1 or positions < prompt_len:
        raise ProofError(f"a proof covers at least the prompt ({prompt_len} positions), not {positions}")
    bounds = [(0, prompt_len)]
    bounds += [(s, min(s + chunk_tokens, positions)) for s in range(prompt_len, positions, chunk_tokens)]
    return bounds


def _topk_bits(rows, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the top-k |values| of a chunk and the bf16 bit patterns of those values."""
    import torch

    flat = rows.reshape(-1)
    if not bool(torch.isfinite(flat).all()):
        raise ProofError("non-finite hidden states")
    k = min(top_k, flat.numel())
    indices = torch.topk(flat.abs(), k, sorted=False).indices
    bits = flat[indices].to(torch.bfloat16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF
    return indices.numpy().astype(np.int64), bits


def commit_chunk(rows, top_k: int = TOP_K) -> bytes:
    """The 2 + 2k byte commitment of one chunk of hidden states ([rows, hidden] tensor)."""
    indices, bits = _topk_bits(rows, top_k)
    return encode_chunk(indices, bits)


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in PROOF_DTYPES:
        raise ProofError(f"activation proofs support {PROOF_DTYPES}, not {name}")
    return name


class ProofBuilder:
    """Collects one sequence's final-norm hidden states during generation and commits chunk by chunk.

    Per forward pass the engine calls `add_hidden(states)` with this sequence's new rows of the
    `model.model.norm` output, shape [rows, hidden] (or [1, rows, hidden]), in position order:
    the prefill's P rows (at once or in pieces), then one row per decode step. No padding rows
    (slice them off for left-padded batches). A chunk's top-k is selected as soon as its rows
    are in, so memory stays at one chunk of rows plus 2 x top_k integers per chunk done; the
    polynomial encoding of every chunk (the costlier part) waits for `finish()`, which the node
    server calls in its trace writer's thread, off the request path.
    """

    def __init__(self, prompt_len: int, *, dtype: str | None = None, chunk_tokens: int = CHUNK_TOKENS,
                 top_k: int = TOP_K):
        if prompt_len < 1:
            raise ProofError("prompt_len must be >= 1")
        self.prompt_len = prompt_len
        self.chunk_tokens = chunk_tokens
        self.top_k = top_k
        self.positions = 0
        # The dtype the model computed in. Given explicitly, rows may arrive upcast (a bf16 model's
        # rows as float32 are exact); otherwise it is taken from the first rows.
        self.dtype: str | None = _dtype_name(dtype) if dtype else None
        self._dtype_fixed = dtype is not None
        self.seconds = 0.0              # time spent in this builder (overhead accounting)
        self._pending: list = []        # rows of the chunk being filled
        self._pending_rows = 0
        self._selected: list[tuple[np.ndarray, np.ndarray]] = []   # (indices, bf16 bits) per chunk

    def _chunk_target(self) -> int:
        return self.prompt_len if not self._selected else self.chunk_tokens

    def add_hidden(self, states) -> None:
        start = time.perf_counter()
        if states.dim() == 3:
            if states.shape[0] != 1:
                raise ProofError("add_hidden takes one sequence's rows: slice the batch first")
            states = states[0]
        if states.dim() != 2:
            raise ProofError(f"expected [rows, hidden] hidden states, got shape {tuple(states.shape)}")
        dtype = _dtype_name(states.dtype)
        if self.dtype is None:
            self.dtype = dtype
        elif dtype != self.dtype and not self._dtype_fixed:
            raise ProofError(f"hidden states changed dtype mid-sequence ({self.dtype} -> {dtype})")
        states = states.detach()
        while states.shape[0]:
            take = min(self._chunk_target() - self._pending_rows, states.shape[0])
            self._pending.append(states[:take])
            self._pending_rows += take
            self.positions += take
            states = states[take:]
            if self._pending_rows == self._chunk_target():
                self._commit_pending()
        self.seconds += time.perf_counter() - start

    def _commit_pending(self) -> None:
        import torch

        rows = self._pending[0] if len(self._pending) == 1 else torch.cat(self._pending)
        indices, bits = _topk_bits(rows, self.top_k)
        # int32 / uint16 hold flat indices of one chunk and bf16 bit patterns exactly, in a third of the memory
        index_type = np.int32 if rows.numel() < 2**31 else np.int64
        self._selected.append((indices.astype(index_type), bits.astype(np.uint16)))
        self._pending, self._pending_rows = [], 0

    def finish(self) -> ActivationProof:
        start = time.perf_counter()
        if self.positions < self.prompt_len:
            raise ProofError(f"got {self.positions} hidden-state rows, fewer than the prompt's {self.prompt_len}")
        if self._pending_rows:
            self._commit_pending()
        chunks = [encode_chunk(indices, bits) for indices, bits in self._selected]
        self.seconds += time.perf_counter() - start
        return ActivationProof(
            prompt_len=self.prompt_len,
            positions=self.positions,
            chunks=chunks,
            dtype=self.dtype or "float32",
            chunk_tokens=self.chunk_tokens,
            top_k=self.top_k,
        )


def _as_id_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    if ids and isinstance(ids[0], list):
        raise ProofError("pass one sequence of token ids, not a batch")
    return [int(i) for i in ids]


def final_hidden_states(model, input_ids: Sequence[int]):
    """[positions, hidden] output of the final norm for one prefill (no lm_head: it is not needed)."""
    import torch

    ids = torch.tensor([_as_id_list(input_ids)], dtype=torch.long)
    with torch.inference_mode():
        return model.model(input_ids=ids, use_cache=False).last_hidden_state[0]


def build_proofs(model, input_ids: Sequence[int], prompt_len: int, *, cover_last: bool = False,
                 chunk_tokens: int = CHUNK_TOKENS, top_k: int = TOP_K) -> ActivationProof:
    """Reference: the proof of prompt + reply from one prefill, covering what a decode loop covers
    (every position but the last; all of them with cover_last=True)."""
    ids = _as_id_list(input_ids)
    positions = len(ids) if cover_last or len(ids) == prompt_len else len(ids) - 1
    builder = ProofBuilder(prompt_len, chunk_tokens=chunk_tokens, top_k=top_k)
    builder.add_hidden(final_hidden_states(model, ids[:positions]))
    return builder.finish()


# ----------------------------------------------------------------------------------------- verifier


@dataclass(frozen=True)
class ProofThresholds:
    """Acceptance limits per chunk (all must hold), and the protocol a proof must follow.

    Calibrated on this CPU with bench/bench_integrity.py (fp32 KV-cache decode on the prover,
    fp32 prefill on the verifier); see bench/RESULTS.md. bf16 needs its own, looser limits."""

    max_exp_mismatches: int = 2         # top-k entries whose sign/exponent differ (or not in the prover's top-k)
    max_mant_err_mean: float = 0.1      # mean |mantissa diff| (bf16 ulps) over exponent-matched entries
    max_mant_err_median: float = 0.0
    min_last_token_logprob: float = -16.0   # plausibility of an uncovered last reply token
    chunk_tokens: int = CHUNK_TOKENS
    top_k: int = TOP_K


FP32_THRESHOLDS = ProofThresholds()
BF16_THRESHOLDS = ProofThresholds(max_exp_mismatches=24, max_mant_err_mean=3.0, max_mant_err_median=2.0)
THRESHOLDS = {"float32": FP32_THRESHOLDS, "bfloat16": BF16_THRESHOLDS}


@dataclass
class ChunkStats:
    start: int
    end: int
    k: int
    exp_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    mant_err_max: int
    accepted: bool


@dataclass
class VerificationResult:
    accepted: bool
    reason: str | None = None           # why it was rejected (first failing check)
    chunks: list[ChunkStats] = field(default_factory=list)
    last_token_logprob: float | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "chunks": len(self.chunks),
            "max_exp_mismatches": max((c.exp_mismatches for c in self.chunks), default=0),
            "max_mant_err_mean": max((c.mant_err_mean for c in self.chunks), default=0.0),
            "last_token_logprob": self.last_token_logprob,
        }


def compare_chunk(rows, blob: bytes, top_k: int) -> tuple[int, int, float, float, int]:
    """(k, exp mismatches, mantissa error mean, median, max) of the verifier's rows vs a commitment."""
    indices, bits = _topk_bits(rows, top_k)
    if len(blob) != 2 + 2 * indices.size:
        raise ProofFormatError(f"chunk commitment of {len(blob)} bytes, expected {2 + 2 * indices.size}")
    claimed = open_chunk(blob, indices).astype(np.int64)
    exp_match = (claimed >> 7) == (bits >> 7)          # sign and exponent
    mant_err = np.abs((claimed & 0x7F) - (bits & 0x7F))[exp_match]
    mismatches = int(indices.size - exp_match.sum())
    if mant_err.size == 0:
        return indices.size, mismatches, math.inf, math.inf, 1 << 16
    return indices.size, mismatches, float(mant_err.mean()), float(np.median(mant_err)), int(mant_err.max())


def _reject(result: VerificationResult, reason: str, started: float) -> VerificationResult:
    result.accepted, result.reason = False, reason
    result.seconds = time.perf_counter() - started
    return result


def verify_proofs(model, prompt_ids: Sequence[int], reply_ids: Sequence[int],
                  proof: ActivationProof | dict[str, Any], *,
                  thresholds: ProofThresholds | None = None) -> VerificationResult:
    """Re-run one prefill of prompt + reply on `model` (the claimed model, in the claimed dtype)
    and accept the proof only if every chunk matches within `thresholds`."""
    import torch

    started = time.perf_counter()
    result = VerificationResult(accepted=False)
    try:
        proof = proof if isinstance(proof, ActivationProof) else ActivationProof.from_dict(proof)
    except ProofError as exc:
        return _reject(result, str(exc), started)
    prompt, reply = _as_id_list(prompt_ids), _as_id_list(reply_ids)
    model_dtype = _dtype_name(next(model.parameters()).dtype)
    limits = thresholds or THRESHOLDS[model_dtype]
    total = len(prompt) + len(reply)
    if proof.dtype != model_dtype:
        return _reject(result, f"proof computed in {proof.dtype}, verifier model runs {model_dtype}", started)
    if (proof.chunk_tokens, proof.top_k) != (limits.chunk_tokens, limits.top_k):
        return _reject(result, f"proof uses chunks of {proof.chunk_tokens} / top-{proof.top_k}, "
                               f"protocol is {limits.chunk_tokens} / top-{limits.top_k}", started)
    if proof.prompt_len != len(prompt):
        return _reject(result, f"proof is for a {proof.prompt_len}-token prompt, got {len(prompt)}", started)
    if proof.positions not in (max(len(prompt), total - 1), total):
        return _reject(result, f"proof covers {proof.positions} positions, expected {total - 1} or {total}", started)
    bounds = chunk_bounds(proof.prompt_len, proof.positions, proof.chunk_tokens)
    if len(bounds) != len(proof.chunks):
        return _reject(result, f"proof has {len(proof.chunks)} chunks, expected {len(bounds)}", started)

    hidden = final_hidden_states(model, (prompt + reply)[: proof.positions])
    for (start, end), blob in zip(bounds, proof.chunks):
        try:
            k, mismatches, mean, median, worst = compare_chunk(hidden[start:end], blob, proof.top_k)
        except (ProofFormatError, ProofError) as exc:
            return _reject(result, f"chunk [{start}, {end}): {exc}", started)
        ok = (mismatches <= limits.max_exp_mismatches and mean <= limits.max_mant_err_mean
              and median <= limits.max_mant_err_median)
        result.chunks.append(ChunkStats(start, end, k, mismatches, mean, median, worst, ok))
    bad = next((c for c in result.chunks if not c.accepted), None)
    if bad is not None:
        return _reject(result, f"chunk [{bad.start}, {bad.end}) does not match: {bad.exp_mismatches} exponent "
                               f"mismatches, mantissa error mean {bad.mant_err_mean:.3g} median "
                               f"{bad.mant_err_median:.3g}", started)
    if reply and proof.positions == total - 1:
        # The last reply token was sampled from the last covered row but never fed: check that the
        # claimed model could plausibly have produced it.
        with torch.inference_mode():
            logits = model.get_output_embeddings()(hidden[-1:]).float()[0]
        result.last_token_logprob = float(torch.log_softmax(logits, -1)[reply[-1]])
        if result.last_token_logprob < limits.min_last_token_logprob:
            return _reject(result, f"last reply token is implausible under this model "
                                   f"(log p = {result.last_token_logprob:.1f})", started)
    result.accepted = True
    result.seconds = time.perf_counter() - started
    return result
