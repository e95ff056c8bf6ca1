"""The seam for a malicious node, for tests and benchmarks of the robust aggregation only.

A node whose node_config says `attack="scale"` or `attack="sign-flip"` (a NodeSpec field in the
federation config, passed to the SuperNode's --node-config) trains honestly, then sends
    scale:      reference + factor·(update − reference)
    sign-flip:  reference − factor·(update − reference)
instead of its real update. Nothing else in the code path changes.
"""

from __future__ import annotations

import numpy as np

ATTACKS = ("none", "scale", "sign-flip")


def apply_attack(update: dict[str, np.ndarray], reference: dict[str, np.ndarray], kind: str, factor: float) -> dict[str, np.ndarray]:
    if kind == "none":
        return update
    if kind not in ATTACKS:
        raise ValueError(f"unknown attack {kind!r} (known: {', '.join(ATTACKS)})")
    sign = 1.0 if kind == "scale" else -1.0
    return {k: (reference[k] + sign * factor * (update[k] - reference[k])).astype(np.float32) for k in update}
