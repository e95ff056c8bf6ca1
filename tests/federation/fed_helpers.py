"""Real node trace stores and federation configs for the federation tests."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

TINY = "tiny-random"


def tiny_identity() -> dict[str, str]:
    from inference.model_refs import resolve_model_ref

    resolved = resolve_model_ref(TINY)
    return {"ref": resolved.ref, "version": resolved.version, "weights_sha256": resolved.weights_sha256}


def fill_store(path: Path, node_id: str, n: int, *, pairs: bool = False, consent: str = "share",
               version: str | None = None) -> Path:
    """A node store with `n` opted-in traces served by tiny-random (or by `version` of it); with
    `pairs`, each trace has two replies and the user's choice of the first, which the store turns
    into a DPO pair."""
    from traces.schemas import Choice, Feedback, Message, ModelInfo, Trace
    from traces.store import TraceStore

    model = ModelInfo(**{**tiny_identity(), **({"version": version} if version else {})})
    with TraceStore(path) as store:
        for i in range(n):
            trace_id = f"chatcmpl-{node_id}-{i}-{uuid.uuid4().hex[:6]}"
            question = f"[{node_id}{version or ''}] How much is {i} plus {i + 1}?"
            good = f"{i} plus {i + 1} is {2 * i + 1}."
            replies = [good, "I would rather talk about the weather today."] if pairs else [good]
            trace = Trace(id=trace_id, node_id=node_id, model=model, consent=consent,
                          messages=[Message(role="user", content=question)],
                          choices=[Choice(index=k, text=text) for k, text in enumerate(replies)])
            store.add_traces([trace])
            if pairs:
                store.record_feedback(Feedback(id=f"fb-{trace_id}", trace_id=trace_id, choice=0))
    return path


def write_config(path: Path, data: dict[str, Any]) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(data))
    return path


def base_config(tmp: Path, nodes: list[tuple[str, Path]], *, method: str = "sft", rounds: int = 1,
                eval_store: Path | None = None, **sections: Any) -> dict[str, Any]:
    """A small, fast federation config on tiny-random."""
    data: dict[str, Any] = {
        "base": TINY,
        "method": method,
        "rounds": rounds,
        "run": {"dir": str(tmp / "run")},
        "nodes": [{"name": name, "store": str(store)} for name, store in nodes],
        "client": {
            "local_steps": 2,
            "min_examples": 4,
            "training_overrides": {
                f"{method}.per_device_train_batch_size": 2,
                f"{method}.max_length": 64,
                "lora.dropout": 0.0,
                "runtime.torch_threads": 1,
            },
        },
        "schedule": {"lr": 1e-2, "min_lr": 1e-3},
        "strategy": {"round_timeout_s": 120, "connect_timeout_s": 60},
        "eval": {"max_examples": 6, **({"store": str(eval_store)} if eval_store else {})},
        "publish": {"registry": str(tmp / "registry")},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def pid_gone(pid: int) -> bool:
    """Not running any more (a zombie waiting for a reaper that is not ours counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def flower_replies(updates: dict[str, dict[str, Any]], weights: dict[str, int] | None = None) -> list[Any]:
    """Real Flower train replies carrying `updates` (node name -> LoRA arrays), as nodes send
    them: one ArrayRecord, one MetricRecord with num-examples, the node's ConfigRecord. Needs a
    task identity (Flower stamps messages with it): see the `task_identity` fixtures."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

    replies = []
    for index, (name, arrays) in enumerate(updates.items(), start=1):
        instruction = Message(content=RecordDict({"config": ConfigRecord({"round": 1})}), dst_node_id=index,
                              message_type=MessageType.TRAIN)
        content = RecordDict({
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": (weights or {}).get(name, 1), "skipped": 0, "train-loss": 1.0,
                                     "steps": 1, "seconds": 0.1, "lr": 1e-3}),
            "node": ConfigRecord({"name": name, "skip-reason": ""}),
        })
        replies.append(Message(content=content, reply_to=instruction))
    return replies
