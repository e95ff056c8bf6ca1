"""LoRA-aware aggregation, in plain numpy (no torch, no flwr): easy to test against a direct
computation.

For a LoRA module the weight update of node i is ΔW_i = s·B_i·A_i. The server wants the
weighted mean Σ w_i ΔW_i. Averaging A and B separately gives s·(Σ w_i B_i)(Σ w_i A_i), which is
not that mean (cross terms B_i·A_j appear). Two exact-or-measured ways:

* FFA-LoRA: A frozen and shared, so Σ w_i s·B_i·A = s·(Σ w_i B_i)·A: averaging B is exact.
* SVD: average the products P = Σ w_i B_i·A_i, then re-factorise P ≈ B'·A' at rank r with a
  truncated SVD; the relative error ‖P − B'A'‖/‖P‖ is reported (zero when rank(P) ≤ r).

Arrays are keyed by wire name ("…q_proj.lora_A" / "…q_proj.lora_B", see federation/models.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]


def normalized_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    return w / w.sum()


def weighted_mean(arrays: Sequence[Arrays], weights: Sequence[float]) -> Arrays:
    w = normalized_weights(weights)
    keys = arrays[0].keys()
    for other in arrays[1:]:
        if other.keys() != keys:
            raise ValueError("all updates must carry the same tensors")
    return {k: sum(wi * a[k].astype(np.float64) for wi, a in zip(w, arrays)).astype(np.float32) for k in keys}


def modules(names: Sequence[str]) -> list[str]:
    """LoRA module names that have a B tensor among `names`."""
    return sorted(n[: -len(".lora_B")] for n in names if n.endswith(".lora_B"))


def product(a: np.ndarray, b: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """ΔW = s·B·A in float64."""
    return scale * (b.astype(np.float64) @ a.astype(np.float64))


def exact_mean_update(clients: Sequence[tuple[Arrays, Arrays]], weights: Sequence[float], scale: float) -> Arrays:
    """The reference: Σ w_i s·B_i·A_i per module, computed directly. `clients` = [(A, B)] where
    A is keyed by module and B by module too."""
    w = normalized_weights(weights)
    out: Arrays = {}
    for module in clients[0][1]:
        out[module] = sum(wi * product(a[module], b[module], scale) for wi, (a, b) in zip(w, clients))
    return out


def ffa_mean_b(b_updates: Sequence[Arrays], weights: Sequence[float]) -> Arrays:
    """FFA-LoRA aggregation: the weighted mean of the B tensors (the frozen A is shared)."""
    return weighted_mean(b_updates, weights)


def naive_mean(clients: Sequence[tuple[Arrays, Arrays]], weights: Sequence[float]) -> tuple[Arrays, Arrays]:
    """FedAvg of A and B separately (what a LoRA-unaware FedAvg does)."""
    mean_a = weighted_mean([a for a, _ in clients], weights)
    mean_b = weighted_mean([b for _, b in clients], weights)
    return mean_a, mean_b


def svd_refactorise(target: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Best rank-`rank` factorisation target ≈ B·A (Eckart–Young), split √Σ to each side.
    Returns (A, B, relative Frobenius error)."""
    u, s, vt = np.linalg.svd(target, full_matrices=False)
    k = min(rank, len(s))
    root = np.sqrt(s[:k])
    b = np.zeros((target.shape[0], rank))
    a = np.zeros((rank, target.shape[1]))
    b[:, :k] = u[:, :k] * root
    a[:k, :] = root[:, None] * vt[:k, :]
    norm = float(np.linalg.norm(target))
    error = float(np.linalg.norm(target - b @ a)) / norm if norm > 0 else 0.0
    return a.astype(np.float32), b.astype(np.float32), error


def svd_mean(clients: Sequence[tuple[Arrays, Arrays]], weights: Sequence[float], rank: int) -> tuple[Arrays, Arrays, dict[str, float]]:
    """Average the products B_i·A_i, then re-factorise each at `rank`.

    Returns (A, B, error): error["max"] is the worst module's relative error and error["total"]
    the relative error over all modules together."""
    w = normalized_weights(weights)
    new_a: Arrays = {}
    new_b: Arrays = {}
    worst, residual_sq, total_sq = 0.0, 0.0, 0.0
    for module in clients[0][1]:
        target = sum(wi * product(a[module], b[module]) for wi, (a, b) in zip(w, clients))
        a, b, error = svd_refactorise(target, rank)
        new_a[module], new_b[module] = a, b
        norm_sq = float(np.linalg.norm(target)) ** 2
        worst = max(worst, error)
        residual_sq += (error**2) * norm_sq
        total_sq += norm_sq
    total = math.sqrt(residual_sq / total_sq) if total_sq > 0 else 0.0
    return new_a, new_b, {"max": worst, "total": total}


def relative_error(reference: Arrays, approx: Arrays) -> float:
    """‖reference − approx‖ / ‖reference‖ over all modules together."""
    num = sum(float(np.linalg.norm(reference[k] - approx[k])) ** 2 for k in reference)
    den = sum(float(np.linalg.norm(reference[k])) ** 2 for k in reference)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


def split_ab(arrays: Arrays) -> tuple[Arrays, Arrays]:
    """{"m.lora_A": A, "m.lora_B": B} -> ({"m": A}, {"m": B})."""
    a = {k[: -len(".lora_A")]: v for k, v in arrays.items() if k.endswith(".lora_A")}
    b = {k[: -len(".lora_B")]: v for k, v in arrays.items() if k.endswith(".lora_B")}
    return a, b


def join_ab(a: Arrays, b: Arrays) -> Arrays:
    out = {f"{k}.lora_A": v for k, v in a.items()}
    out.update({f"{k}.lora_B": v for k, v in b.items()})
    return out


def update_norm(update: Arrays, reference: Arrays) -> float:
    """L2 norm of (update − reference) over all tensors together."""
    return math.sqrt(sum(float(np.sum((update[k].astype(np.float64) - reference[k]) ** 2)) for k in update))


def clip_update(update: Arrays, reference: Arrays, max_norm: float) -> tuple[Arrays, float]:
    """Scale (update − reference) down to `max_norm` when longer. Returns (clipped, factor)."""
    norm = update_norm(update, reference)
    if norm <= max_norm or norm == 0:
        return update, 1.0
    factor = max_norm / norm
    return {k: (reference[k] + factor * (update[k] - reference[k])).astype(np.float32) for k in update}, factor


def pairwise_cosines(stacks: Iterable[np.ndarray], count: int) -> np.ndarray:
    """[count, count] cosine similarities between `count` updates. `stacks` yields, per tensor,
    the updates stacked [count, ...]; each update's vector is all its tensors joined."""
    gram = np.zeros((count, count))
    for stack in stacks:
        flat = stack.reshape(count, -1).astype(np.float64)
        gram += flat @ flat.T
    norms = np.sqrt(np.diag(gram))
    denominator = np.outer(norms, norms)
    return np.divide(gram, denominator, out=np.zeros_like(gram), where=denominator > 0)


def agreement_scores(cosines: np.ndarray) -> list[float]:
    """Per update, the cosine it reaches with at least half of the others (rounded up): the
    upper median of its cosines to the others. An update scores >= t exactly when it agrees at
    level t with half or more of the round, whatever the others' norms (a scaled update cannot
    buy agreement) and whatever one outlier does to a coordinate-wise median."""
    count = len(cosines)
    scores = []
    for i in range(count):
        others = sorted((float(cosines[i, j]) for j in range(count) if j != i), reverse=True)
        scores.append(others[(len(others) + 1) // 2 - 1] if others else 0.0)
    return scores
