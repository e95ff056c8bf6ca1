"""The robust default (configs/federation.toml: FedTrimmedAvg + norm-ratio and direction checks)
against plain FedAvg, on clean data and with one sign-flipping node of four; and what verified
ingest costs.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_robust.py            # embedded SmolLM2-135M
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_robust.py --quick    # tiny-random, a smoke run

Data as bench/bench_federation.py: real conversations (chitchat-dataset), NON-IID over 4 nodes by
reply length, a pooled held-out set. Four Flower simulations with the same data, rounds, local
steps and learning rate (FFA-LoRA, B-only updates):
  fedavg / clean        plain FedAvg, no robust checks
  robust / clean        the shipped default: does it still train as well on honest non-IID updates?
  robust / attacked     node-3 sends reference - F·(its update - reference) every round
  fedavg / attacked     the same attack, no robust checks
Reported: held-out loss per round, the gain (base - final loss) of each run, the robust default's
gain relative to FedAvg's on clean data, the share of the clean gain kept under attack, and which
updates the checks rejected.

Ingest cost: signature checks of a node store of signed traces (records per second) against one
local training round, and the verified-ingest check of a round (signatures of every record +
proofs sampled at the default rate) on that store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def signed_store(path: Path, examples: list[dict], identity: dict, key) -> None:
    """The examples as traces signed by `key`, as a signing node stores them."""
    import uuid

    from traces.schemas import Choice, Message, ModelInfo, Trace
    from traces.signing import sign_record
    from traces.store import TraceStore

    model = ModelInfo(**identity)
    with TraceStore(path) as store:
        batch = []
        for example in examples:
            trace = Trace(id=f"chatcmpl-{uuid.uuid4().hex[:16]}", node_id=key.node_id, model=model, consent="share",
                          messages=[Message(**m) for m in example["messages"]], choices=[Choice(index=0, text=example["reply"])])
            batch.append(Trace.model_validate(sign_record(trace, key)))
        store.add_traces(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="tiny-random, fewer examples (a smoke run)")
    parser.add_argument("--per-node", type=int, default=32)
    parser.add_argument("--eval-per-node", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--attack-factor", type=float, default=3.0, help="under the 4x norm ratio on purpose")
    parser.add_argument("--ingest-traces", type=int, default=2000, help="signed traces in the ingest-cost store")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-robust"))
    parser.add_argument("--reuse-runs", action="store_true",
                        help="take a run's figures from OUT/<run>/metrics.json when it exists (same settings!)")
    args = parser.parse_args()
    if args.quick:
        args.model, args.per_node, args.eval_per_node, args.rounds, args.local_steps = "tiny-random", 16, 4, 2, 3
        args.lr, args.ingest_traces = 1e-2, 500

    import torch

    from bench_federation import conversations_to_examples, fill_store, split_non_iid
    from federation.config import FederationConfig
    from federation.ingest import IngestSettings, check_node_data
    from federation.sim import run_simulation
    from inference.model_refs import resolve_model_ref
    from swarmloop.configfile import load_config
    from traces.signing import NodeKey, TrustedKeys
    from traces.store import TraceStore
    from traces.verify import verify_store

    torch.set_num_threads(1)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_model_ref(args.model)
    identity = {"ref": resolved.ref, "version": resolved.version, "weights_sha256": resolved.weights_sha256}
    overrides = {"sft.per_device_train_batch_size": args.batch, "sft.max_length": args.max_length,
                 "sft.lr_scheduler_type": "constant", "lora.dropout": 0.0, "eval.max_length": args.max_length}
    examples = conversations_to_examples(limit=6000, seed=0)
    train, held_out = split_non_iid(examples, 4, args.per_node, args.eval_per_node)
    stores = []
    for k, rows in enumerate(train):
        path = out / f"node-{k}.db"
        path.unlink(missing_ok=True)
        fill_store(path, f"node-{k}", rows, identity)
        stores.append({"name": f"node-{k}", "store": str(path)})
    (out / "eval.db").unlink(missing_ok=True)
    fill_store(out / "eval.db", "eval", held_out, identity)
    shipped = load_config("configs/federation.toml", FederationConfig)

    def config(run: str, robust: bool, attacked: bool) -> FederationConfig:
        nodes = [dict(s) for s in stores]
        if attacked:
            nodes[-1].update(attack="sign-flip", attack_factor=args.attack_factor)
        strategy = ({"name": shipped.strategy.name, "trim_beta": shipped.strategy.trim_beta} if robust
                    else {"name": "fedavg"})
        return FederationConfig.model_validate({
            "base": args.model, "method": "sft", "rounds": args.rounds,
            "run": {"dir": str(out / run), "resume": False}, "nodes": nodes,
            "client": {"local_steps": args.local_steps, "min_examples": 1, "training_overrides": overrides},
            "schedule": {"kind": "constant", "lr": args.lr},
            "strategy": {**strategy, "round_timeout_s": 3600},
            "robust": shipped.robust.model_dump(mode="json") if robust else {"max_norm_ratio": None, "min_cosine": None},
            "integrity": {"proof_sample_rate": 0.0},
            "eval": {"store": str(out / "eval.db"), "max_examples": len(held_out)},
            "publish": {"registry": None},
            "simulation": {"client_cpus": 1.0, "ray_num_cpus": 1},
        })

    runs = {}
    for name, robust, attacked in (("fedavg-clean", False, False), ("robust-clean", True, False),
                                   ("robust-attacked", True, True), ("fedavg-attacked", False, True)):
        metrics = out / name / "metrics.json"
        if not (args.reuse_runs and metrics.is_file()):
            run_simulation(config(name, robust, attacked))
        history = json.loads(metrics.read_text())
        losses = [h["eval"]["loss"] for h in history]
        rejected = {f"round {h['round']}": {n: round(i.get("agreement", float("nan")), 3)
                                            for n, i in h.get("nodes", {}).items() if i.get("status") == "rejected"}
                    for h in history[1:]}
        runs[name] = {"loss_by_round": losses, "gain": losses[0] - losses[-1], "rejected": rejected,
                      "round_seconds": [h.get("seconds") for h in history]}
        print(name, json.dumps(runs[name]), flush=True)

    clean_gain = runs["robust-clean"]["gain"]
    summary = {
        "robust_vs_fedavg_clean_gain": clean_gain / runs["fedavg-clean"]["gain"],
        "robust_attacked_gain_kept": runs["robust-attacked"]["gain"] / clean_gain,
        "fedavg_attacked_gain_kept": runs["fedavg-attacked"]["gain"] / runs["fedavg-clean"]["gain"],
        "robust_attacked_loss_vs_clean": runs["robust-attacked"]["loss_by_round"][-1] / runs["robust-clean"]["loss_by_round"][-1] - 1,
        "fedavg_attacked_loss_vs_clean": runs["fedavg-attacked"]["loss_by_round"][-1] / runs["fedavg-clean"]["loss_by_round"][-1] - 1,
    }

    # ---- ingest cost: a store of signed traces, checked as a round's ingest does
    key = NodeKey.generate()
    trusted = TrustedKeys.of(key, names=["node-0"])
    ingest_store = out / "ingest.db"
    ingest_store.unlink(missing_ok=True)
    pool = (examples * (args.ingest_traces // len(examples) + 1))[: args.ingest_traces]
    signed_store(ingest_store, pool, identity, key)
    with TraceStore(ingest_store, readonly=True) as store:
        stored = len(store)                     # exact duplicates among the conversations are folded
        started = time.perf_counter()
        report = verify_store(store, "sft", trusted)
        verify_s = time.perf_counter() - started
    assert report.verified == stored and not report.failed(True)
    settings = IngestSettings(trusted_keys_toml=trusted.to_toml(), require_signatures=True,
                              proof_sample_rate=shipped.integrity.proof_sample_rate, seed=1)
    started = time.perf_counter()
    ingest = check_node_data(ingest_store, "sft", settings, node_name="node-0")
    ingest_s = time.perf_counter() - started
    closes = runs["fedavg-clean"]["round_seconds"]       # elapsed seconds when each round closed
    round_s = statistics.median(b - a for a, b in zip(closes[1:], closes[2:])) if len(closes) > 2 else None
    results = {
        "command": " ".join(["HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_robust.py", *sys.argv[1:]]),
        "model": args.model, "nodes": 4, "per_node": args.per_node, "held_out": len(held_out), "rounds": args.rounds,
        "local_steps": args.local_steps, "batch": args.batch, "lr": args.lr, "attack_factor": args.attack_factor,
        "runs": runs, "summary": summary,
        "ingest": {"traces": stored, "signature_check_s": round(verify_s, 3),
                   "records_per_s": round(stored / verify_s), "round_check_s": round(ingest_s, 3),
                   "proofs_sampled": ingest.proofs_sampled,
                   "simulation_round_s": round_s},     # 4 nodes' training one after another + central eval
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
