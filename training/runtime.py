"""Process-level knobs from configs/training.toml [runtime] that no TrainingArguments field covers."""

from __future__ import annotations

from training.config import RuntimeSettings


def apply_runtime(runtime: RuntimeSettings) -> None:
    import torch

    if runtime.torch_threads and torch.get_num_threads() != runtime.torch_threads:
        torch.set_num_threads(runtime.torch_threads)
