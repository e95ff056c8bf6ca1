"""The Flower ClientApp: one node's local round.

train:   open the node's store -> SFT or DPO dataset -> verified ingest (federation/ingest.py:
         signatures of every record used, activation proofs on a sample; a node that fails sits
         the round out with the reason) -> the training recipe (training/sft.py or
         training/dpo.py, the only training path) for `local-steps` steps on the global adapter
         -> reply with the trainable LoRA tensors only (one ArrayRecord), a MetricRecord with
         "num-examples" and the metrics, and a ConfigRecord naming the node.
         Too little data: the same reply shape with num-examples 0, skipped 1, an empty
         ArrayRecord and the reason; the server leaves the node out of that round.
evaluate: the global adapter's metric on the node's own data (only when strategy.federated_eval).

`app` (deployment) reads its node settings from the SuperNode's --node-config; the simulation
builds the same app with `make_client_app(per-partition settings)`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation import protocol
from federation.attacks import apply_attack
from federation.dataset import NotEnoughData, node_dataset, round_slice
from federation.ingest import INGEST_KEY
from federation.logs import get_logger
from federation.protocol import ARRAYS_KEY, METRICS_KEY, NODE_KEY

log = get_logger()

# One loaded base + adapter per process (simulation actors serve many rounds; a deployment
# starts a fresh process per message, where this holds at most one entry).
_MODELS: dict[tuple, tuple[Any, Any, list[str]]] = {}


def node_settings(context: Context, overrides: dict[int, dict[str, Any]] | None) -> dict[str, Any]:
    settings = dict(context.node_config)
    if overrides is not None:
        settings.update(overrides.get(int(settings.get("partition-id", -1)), {}))
    if protocol.NODE_DATA_PATH not in settings:
        raise ValueError(f"this node has no {protocol.NODE_DATA_PATH!r} in its node config: where is its trace store?")
    settings.setdefault(protocol.NODE_NAME, f"node-{context.node_id}")
    return settings


def _model_for(instructions: protocol.RoundInstructions, settings: Any) -> tuple[Any, Any, list[str]]:
    """The base model the server named, with the federated LoRA adapter (cached per process)."""
    from federation.config import LoraSection
    from federation.models import build_lora_model, lora_a_digest, travelling_names
    from inference.loading import load_model
    from inference.model_refs import resolve_model_ref

    lora = LoraSection(aggregation=instructions.lora_aggregation, seed=instructions.lora_seed)
    key = (instructions.base_ref, instructions.base_sha256, settings.lora.model_dump_json(), lora.model_dump_json())
    if key not in _MODELS:
        resolved = resolve_model_ref(instructions.base_ref)
        if resolved.weights_sha256 != instructions.base_sha256:
            raise ValueError(
                f"base model mismatch: {instructions.base_ref} is {resolved.weights_sha256[:12]}… on this node, "
                f"the server trains {instructions.base_sha256[:12]}…"
            )
        loaded = load_model(resolved)
        peft_model = build_lora_model(loaded.model, settings.lora, lora)
        digest = lora_a_digest(peft_model)
        if digest != instructions.lora_a_digest:
            raise ValueError("the shared LoRA A matrices drawn on this node differ from the server's (seed or numerics)")
        _MODELS.clear()
        _MODELS[key] = (peft_model, loaded.tokenizer, travelling_names(peft_model, lora))
    return _MODELS[key]


def _proximal_hooks(model: Any, reference: dict[str, np.ndarray], mu: float) -> list[Any]:
    """FedProx: add mu·(w − w_global) to each trainable tensor's gradient, i.e. the gradient of
    (mu/2)·‖w − w_global‖², without touching the recipe's loss."""
    import torch

    from federation.models import wire_name

    hooks = []
    for name, param in model.named_parameters():
        key = wire_name(name)
        if param.requires_grad and key in reference:
            anchor = torch.from_numpy(reference[key]).to(param.dtype)
            hooks.append(param.register_hook(lambda grad, p=param, a=anchor: grad + mu * (p.detach() - a)))
    return hooks


def _reply(msg: Message, name: str, arrays: dict[str, np.ndarray], metrics: dict[str, float], skip_reason: str = "",
           ingest: Any = None) -> Message:
    records: dict[str, Any] = {
        ARRAYS_KEY: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
        METRICS_KEY: MetricRecord(metrics),
        NODE_KEY: ConfigRecord({"name": name, "skip-reason": skip_reason}),
    }
    if ingest is not None:
        records[INGEST_KEY] = ConfigRecord(ingest.to_record())
    return Message(content=RecordDict(records), reply_to=msg)


def check_ingest(instructions: protocol.RoundInstructions, node: dict[str, Any], name: str) -> Any:
    """The round's verified-ingest checks on this node's data (federation/ingest.py), or None
    when the server asked for none. The base model is loaded only once a sampled trace carries
    a proof (then it is the model the round trains anyway)."""
    from federation.ingest import VerifierModels, check_node_data, load_plain_model

    settings = instructions.ingest()
    if not settings.active:
        return None

    def models() -> VerifierModels:
        model, tokenizer, _ = _model_for(instructions, instructions.settings())
        return VerifierModels(base_model=model, tokenizer=tokenizer, base_ref=instructions.base_ref,
                              base_sha256=instructions.base_sha256, extra_ref=settings.proof_model, loader=load_plain_model)

    report = check_node_data(node[protocol.NODE_DATA_PATH], instructions.method, settings, node_name=name,
                             model_version=instructions.base_version or None, models_factory=models)
    log.info("node %s round %d ingest: %d records checked (%d verified, %d unsigned), proofs %d passed / %d failed / "
             "%d unverifiable, %.2f s%s", name, instructions.round, report.records_checked, report.verified,
             report.unsigned, report.proofs_passed, report.proofs_failed, report.proofs_unverifiable, report.seconds,
             f"; EXCLUDED: {report.reason}" if report.excluded else "")
    return report


def train_round(msg: Message, node: dict[str, Any], node_state: RecordDict | None = None) -> Message:
    """One node's local round. `node_state` is the node's Flower Context.state (kept across
    rounds on the node); the optimizer state lives there when the server asks to keep it."""
    from federation.models import get_arrays, set_arrays
    from training.dpo import train_dpo
    from training.sft import train_sft

    instructions = protocol.RoundInstructions.from_record(msg.content["config"])
    name = str(node[protocol.NODE_NAME])
    round_seed = instructions.seed + instructions.round
    empty_metrics = {"num-examples": 0, "skipped": 1, "train-loss": 0.0, "steps": 0, "optimizer-steps": 0,
                     "seconds": 0.0, "lr": instructions.lr}
    try:
        dataset = node_dataset(
            node[protocol.NODE_DATA_PATH], instructions.method, min_examples=instructions.min_examples,
            max_examples=instructions.max_examples or None, seed=round_seed,
            model_version=instructions.base_version or None, approved_only=instructions.sft_approved_only,
        )
    except NotEnoughData as exc:
        log.warning("node %s sits round %d out: %s", name, instructions.round, exc)
        return _reply(msg, name, {}, empty_metrics, skip_reason=str(exc))
    ingest = check_ingest(instructions, node, name)
    if ingest is not None and ingest.excluded:
        log.warning("node %s is excluded from round %d: %s", name, instructions.round, ingest.reason)
        return _reply(msg, name, {}, empty_metrics, skip_reason=f"integrity: {ingest.reason}", ingest=ingest)

    settings = instructions.settings()
    model, tokenizer, names = _model_for(instructions, settings)
    incoming = {k: v.numpy() for k, v in msg.content[ARRAYS_KEY].items()}
    if sorted(incoming) != names:
        raise ValueError("the server's LoRA tensors do not match this node's adapter (LoRA settings differ?)")
    set_arrays(model, incoming)

    recipe = train_dpo if instructions.method == "dpo" else train_sft
    hp = settings.dpo if instructions.method == "dpo" else settings.sft
    per_round = instructions.local_steps * hp.per_device_train_batch_size * hp.gradient_accumulation_steps
    # this round's examples: the next stretch of the node's epochs (one pass of local_steps)
    round_rows = round_slice(dataset, instructions.round, per_round, instructions.seed)
    hooks = _proximal_hooks(model, incoming, instructions.proximal_mu) if instructions.proximal_mu > 0 else []
    carry = None
    if instructions.keep_optimizer_state and node_state is not None:
        from federation.optimizer_state import CarryOptimizerState, load_optimizer_state

        carry = CarryOptimizerState(load_optimizer_state(node_state))
    started = time.perf_counter()
    try:
        result = recipe(model, tokenizer, round_rows, settings, max_steps=instructions.local_steps,
                        learning_rate=instructions.lr, seed=round_seed, callbacks=[carry] if carry else None)
    finally:
        for hook in hooks:
            hook.remove()
    seconds = time.perf_counter() - started
    steps = int(result.metrics.get("steps", 0))
    optimizer_steps = steps   # the step count of this node's AdamW: this round's, or all its rounds' when carried
    if carry is not None:
        from federation.optimizer_state import store_optimizer_state

        store_optimizer_state(node_state, carry.saved)
        optimizer_steps = max((int(entry["step"]) for entry in (carry.saved or {}).values()), default=steps)

    update = get_arrays(result.model, names)
    attack = str(node.get(protocol.NODE_ATTACK, "none"))
    if attack != "none":  # tests and benchmarks only (federation/attacks.py)
        update = apply_attack(update, incoming, attack, float(node.get(protocol.NODE_ATTACK_FACTOR, 10.0)))
    metrics = {
        "num-examples": len(dataset),
        "skipped": 0,
        "train-loss": float(result.metrics.get("train_loss", float("nan"))),
        "steps": steps,
        "optimizer-steps": optimizer_steps,
        "seconds": round(seconds, 3),
        "lr": instructions.lr,
    }
    log.info("node %s round %d: %d examples, %d steps (optimizer at step %d), loss %.4f, %.1f s", name,
             instructions.round, metrics["num-examples"], metrics["steps"], optimizer_steps, metrics["train-loss"], seconds)
    return _reply(msg, name, update, metrics, ingest=ingest)


def evaluate_round(msg: Message, node: dict[str, Any]) -> Message:
    from federation.models import set_arrays
    from training.eval import evaluate_dataset

    instructions = protocol.RoundInstructions.from_record(msg.content["config"])
    name = str(node[protocol.NODE_NAME])
    try:
        dataset = node_dataset(node[protocol.NODE_DATA_PATH], instructions.method, min_examples=1,
                               max_examples=instructions.max_examples or None, seed=instructions.seed,
                               model_version=instructions.base_version or None,
                               approved_only=instructions.sft_approved_only)
    except NotEnoughData as exc:
        return Message(content=RecordDict({METRICS_KEY: MetricRecord({"num-examples": 0, "eval-metric": 0.0}),
                                           NODE_KEY: ConfigRecord({"name": name, "skip-reason": str(exc)})}), reply_to=msg)
    settings = instructions.settings()
    model, tokenizer, _ = _model_for(instructions, settings)
    set_arrays(model, {k: v.numpy() for k, v in msg.content[ARRAYS_KEY].items()})
    result = evaluate_dataset(model, tokenizer, dataset, instructions.method, settings=settings)
    value = result.metrics["loss"] if instructions.method == "sft" else result.metrics["preference_accuracy"]
    metrics = {"num-examples": len(dataset), "eval-metric": float(value)}
    return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics), NODE_KEY: ConfigRecord({"name": name, "skip-reason": ""})}),
                   reply_to=msg)


def make_client_app(overrides: dict[int, dict[str, Any]] | None = None) -> ClientApp:
    """The ClientApp; `overrides` maps a simulation partition id to that node's settings."""
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return train_round(msg, node_settings(context, overrides), context.state)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return evaluate_round(msg, node_settings(context, overrides))

    return client


app = make_client_app()
