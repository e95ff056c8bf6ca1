"""Federated SFT vs centralized and node-alone training, communication and round overhead.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_federation.py            # embedded SmolLM2-135M
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_federation.py --quick    # tiny-random, minutes less

Data: real human conversations (chitchat-dataset, MIT), each turn answered by the next one as an
SFT example (up to 3 turns of context), split NON-IID over 4 nodes by the length of the reply
(node 0 gets the shortest replies, node 3 the longest), written into 4 real node trace stores;
a pooled held-out set (the same number from every node's slice) goes into an eval store.

Compared, all with the same recipe (training/sft.py), batch size, learning rate and max length,
and scored by the same held-out loss (training/eval.py) on the pooled held-out set:
  federated    Flower simulation, 4 nodes, R rounds x k local steps (batch b) each, FFA-LoRA + FedAvg
  centralized  the recipe on the pooled data: R·k steps of batch 4·b, i.e. the same examples seen
               and the same number of sequential optimizer steps as the federation
               (reported both with the recipe's own LoRA and with FFA-LoRA)
  node alone   each node's own data only, R·k steps of batch b (its own compute in the federation)
Improvement = baseline loss (the base model) - final loss; ratio = federated / centralized.

Communication: mean bytes one node moves per round (down + up) against the full checkpoint.
Overhead: wall time of a simulation round (rounds 2..R, without the central eval) against the
same local training alone (the 4 nodes' k-step recipe runs back to back in this process, one
thread, as the simulation's single one-core Ray actor runs them); the same for a deployment round
(4 SuperNode processes of one thread each, a fresh ClientApp process per message).
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


def conversations_to_examples(limit: int, seed: int) -> list[dict]:
    """(context messages, reply) pairs from chitchat conversations: each turn is one speaker's
    consecutive messages joined; the reply is answered as "assistant", earlier turns alternate."""
    import random

    import chitchat_dataset

    rng = random.Random(seed)
    examples = []
    for convo in chitchat_dataset.Dataset().values():
        turns = [" ".join(m["text"].strip() for m in turn if m["text"].strip()) for turn in convo["messages"]]
        turns = [t for t in turns if t]
        if len(turns) < 2:
            continue
        end = rng.randrange(1, len(turns))
        context = turns[max(0, end - 3):end]
        roles = ["user" if (len(context) - i) % 2 == 1 else "assistant" for i in range(len(context))]
        messages = [{"role": r, "content": t[:600]} for r, t in zip(roles, context)]
        if messages[0]["role"] != "user":
            messages = messages[1:]
        examples.append({"messages": messages, "reply": turns[end][:600]})
    rng.shuffle(examples)
    return examples[:limit]


def split_non_iid(examples: list[dict], nodes: int, per_node: int, eval_per_node: int) -> tuple[list[list[dict]], list[dict]]:
    """Sort by reply length and cut into `nodes` slices: strongly non-IID (short chit-chat vs long)."""
    ordered = sorted(examples, key=lambda e: len(e["reply"]))
    size = len(ordered) // nodes
    slices = [ordered[k * size:(k + 1) * size] for k in range(nodes)]
    train = [s[:per_node] for s in slices]
    held_out = [e for s in slices for e in s[per_node:per_node + eval_per_node]]
    return train, held_out


def fill_store(path: Path, node_id: str, examples: list[dict], identity: dict) -> None:
    from traces.schemas import Choice, Message, ModelInfo, Trace
    from traces.store import TraceStore

    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    traces = [
        Trace(id=f"chatcmpl-{node_id}-{i}", node_id=node_id, model=ModelInfo(**identity), consent="share",
              messages=[Message(**m) for m in e["messages"]], choices=[Choice(index=0, text=e["reply"])])
        for i, e in enumerate(examples)
    ]
    with TraceStore(path) as store:
        store.add_traces(traces)


def sft_rows(examples: list[dict]) -> list[dict]:
    return [{"messages": e["messages"] + [{"role": "assistant", "content": e["reply"]}]} for e in examples]


def heldout(model, tokenizer, eval_set, settings) -> float:
    from training.eval import evaluate_dataset

    return evaluate_dataset(model, tokenizer, eval_set, "sft", settings=settings).metrics["loss"]


def train_alone(ref: str, rows: list[dict], settings, *, steps: int, batch: int, lr: float, ffa: bool, seed: int):
    """The recipe on `rows` alone; returns the trained model and the tokenizer."""
    from datasets import Dataset

    from federation.config import LoraSection
    from federation.models import build_lora_model
    from inference.loading import load_model
    from training.sft import train_sft

    loaded = load_model(ref)
    model = build_lora_model(loaded.model, settings.lora, LoraSection()) if ffa else loaded.model
    local = settings.model_copy(deep=True)
    local.sft.per_device_train_batch_size = batch
    result = train_sft(model, loaded.tokenizer, Dataset.from_list(rows), local, max_steps=steps, learning_rate=lr, seed=seed)
    return result.model, loaded.tokenizer, result.metrics["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--quick", action="store_true", help="tiny-random, fewer examples (a smoke run)")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--per-node", type=int, default=32)
    parser.add_argument("--eval-per-node", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of the recipe's LoRA (centralized, node alone)")
    parser.add_argument("--fed-lr", type=float, default=None,
                        help="learning rate of FFA-LoRA (federated and centralized FFA; default --lr): only B trains")
    parser.add_argument("--reuse-baselines", action="store_true",
                        help="take the centralized recipe, node-alone and local-timing figures from OUT/results.json "
                             "of an earlier run with the same data and recipe settings")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-federation"))
    parser.add_argument("--skip-deploy", action="store_true")
    parser.add_argument("--aggregation", choices=["ffa", "svd"], default="ffa",
                        help="ffa: frozen shared A, B averaged (exact); svd: A and B trained, products averaged "
                             "and re-factorised")
    parser.add_argument("--schedule", choices=["constant", "linear"], default="constant",
                        help="constant: one rate everywhere; linear: the recipe's default decay to 0 over the "
                             "R·k steps for centralized and node-alone runs, and for the federation the same "
                             "decay per round (each round at the mean rate of its k steps in that decay)")
    parser.add_argument("--no-central-ffa", action="store_true", help="skip the centralized FFA-LoRA reference run")
    parser.add_argument("--strategy", choices=["fedavg", "fedavgm", "fedadam"], default="fedavg")
    parser.add_argument("--keep-optimizer-state", action="store_true",
                        help="each node carries its AdamW state from one round to its next")
    parser.add_argument("--server-lr", type=float, default=1.0, help="fedavgm / fedadam server learning rate")
    parser.add_argument("--server-momentum", type=float, default=0.9, help="fedavgm")
    parser.add_argument("--central-sweep", type=lambda v: [float(x) for x in v.split(",")], default=None,
                        metavar="LR,LR,...", help="only train the centralized recipe at these rates (same data and "
                        "schedule) and write OUT/central-sweep-SCHEDULE.json: how good the best-tuned baseline is")
    args = parser.parse_args()
    if args.quick:
        args.model, args.per_node, args.eval_per_node, args.rounds, args.local_steps = "tiny-random", 16, 4, 2, 3
    fed_lr = args.fed_lr or args.lr

    import torch

    from federation.config import FederationConfig
    from federation.dataset import eval_dataset
    from federation.deploy import run_deployment
    from federation.sim import run_simulation
    from inference.loading import load_model
    from inference.model_refs import resolve_model_ref
    from training.config import load_training_settings

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_model_ref(args.model)
    identity = {"ref": resolved.ref, "version": resolved.version, "weights_sha256": resolved.weights_sha256}
    overrides = {"sft.per_device_train_batch_size": args.batch, "sft.max_length": args.max_length,
                 "sft.lr_scheduler_type": "constant", "lora.dropout": 0.0, "eval.max_length": args.max_length}
    fed_overrides = dict(overrides)          # within a round the rate is constant; [schedule] moves it
    if args.schedule == "linear":
        overrides["sft.lr_scheduler_type"] = "linear"
    settings = load_training_settings(None, overrides)
    total_steps = args.rounds * args.local_steps
    if args.schedule == "linear":
        # round r's rate: the mean of the linear decay over its steps (r-1)·k .. r·k-1, so the
        # federation walks the centralized run's schedule round by round (linear across rounds).
        block_mean = lambda r: fed_lr * (1 - ((r - 1) * args.local_steps + (args.local_steps - 1) / 2) / total_steps)  # noqa: E731
        fed_schedule = {"kind": "linear", "lr": block_mean(1), "min_lr": block_mean(args.rounds)}
    else:
        fed_schedule = {"kind": "constant", "lr": fed_lr}
    # One thread everywhere: the simulation runs its nodes one after another in one Ray actor of
    # one core, the baseline the same local training back to back in this process (on a shared
    # machine two threads that wait on each other are far slower than one).
    threads = 1
    torch.set_num_threads(threads)

    # ---- data: real conversations, non-IID over the nodes, into real node stores
    examples = conversations_to_examples(limit=6000, seed=0)
    train, held_out = split_non_iid(examples, args.nodes, args.per_node, args.eval_per_node)
    stores = []
    for k, rows in enumerate(train):
        path = out / f"node-{k}.db"
        fill_store(path, f"node-{k}", rows, identity)
        stores.append({"name": f"node-{k}", "store": str(path)})
    fill_store(out / "eval.db", "eval", held_out, identity)
    reply_chars = [statistics.median(len(e["reply"]) for e in rows) for rows in train]
    print(f"nodes: {len(train)} x {args.per_node} examples, median reply length by node {reply_chars}; held-out {len(held_out)}")

    def fed_config(run: str, rounds: int, eval_on: bool = True) -> FederationConfig:
        return FederationConfig.model_validate({
            "base": args.model, "method": "sft", "rounds": rounds,
            "run": {"dir": str(out / run), "resume": False},
            "nodes": stores,
            "client": {"local_steps": args.local_steps, "min_examples": 1, "training_overrides": fed_overrides,
                       "keep_optimizer_state": args.keep_optimizer_state},
            "lora": {"aggregation": args.aggregation},
            "schedule": fed_schedule,
            "strategy": {"name": args.strategy, "server_lr": args.server_lr, "server_momentum": args.server_momentum,
                         "round_timeout_s": 3600},
            "robust": {"max_norm_ratio": None, "min_cosine": None},   # plain FedAvg: what is compared
            "eval": {"store": str(out / "eval.db"), "max_examples": len(held_out)} if eval_on else {},
            "publish": {"registry": None},
            "simulation": {"client_cpus": float(threads), "ray_num_cpus": threads},
            "deployment": {"threads_per_node": 1},
        })

    eval_set = eval_dataset(out / "eval.db", None, "sft", max_examples=len(held_out))
    base = load_model(args.model)
    baseline_loss = heldout(base.model, base.tokenizer, eval_set, settings)
    del base
    print(f"base held-out loss {baseline_loss:.4f}")

    if args.central_sweep:
        import gc

        from datasets import Dataset  # noqa: F401  (train_alone's import, here so failures show early)

        pooled_rows = [row for rows in train for row in sft_rows(rows)]
        sweep_path = out / f"central-sweep-{args.schedule}.json"
        sweep = json.loads(sweep_path.read_text()) if sweep_path.is_file() else {}
        for lr in args.central_sweep:
            model, tok, _ = train_alone(args.model, pooled_rows, settings, steps=args.rounds * args.local_steps,
                                        batch=args.batch * args.nodes, lr=lr, ffa=False, seed=1)
            sweep[f"{lr:g}"] = heldout(model, tok, eval_set, settings)
            del model
            gc.collect()
            print(f"centralized recipe, {args.schedule} lr {lr:g}: held-out loss {sweep[f'{lr:g}']:.4f}")
            sweep_path.write_text(json.dumps({"base": baseline_loss, **sweep}, indent=1))
        return

    # ---- federated (simulation)
    started = time.perf_counter()
    fed = run_simulation(fed_config("sim", args.rounds))
    fed_wall = time.perf_counter() - started
    fed_loss = fed.eval["loss"]
    print(f"federated: loss {fed.baseline_eval['loss']:.4f} -> {fed_loss:.4f} in {fed_wall:.0f} s")

    import gc

    steps = args.rounds * args.local_steps
    pooled = [row for rows in train for row in sft_rows(rows)]

    def trained_loss(rows: list[dict], *, batch: int, ffa: bool, lr: float) -> float:
        model, tok, _ = train_alone(args.model, rows, settings, steps=steps, batch=batch, lr=lr, ffa=ffa, seed=1)
        loss = heldout(model, tok, eval_set, settings)
        del model
        gc.collect()  # one model in memory at a time
        return loss

    # The baselines depend on the total steps (rounds x local steps), not on how they are split.
    same_setup = ("model", "nodes", "per_node", "batch", "lr", "max_length", "schedule")
    previous = {}
    if args.reuse_baselines and (out / "results.json").is_file():
        previous = json.loads((out / "results.json").read_text())
        if any(previous.get(k, "constant" if k == "schedule" else None) != getattr(args, k) for k in same_setup) \
                or previous["rounds"] * previous["local_steps"] != steps:
            raise SystemExit("--reuse-baselines: OUT/results.json was measured with other settings")
    if previous:
        central_loss, alone = previous["loss"]["centralized"], previous["loss"]["alone"]
        local_round = previous["local_training_round_s"] if previous["local_steps"] == args.local_steps else None
    else:
        local_round = None
        central_loss = trained_loss(pooled, batch=args.batch * args.nodes, ffa=False, lr=args.lr)
        alone = {f"node-{k}": trained_loss(sft_rows(rows), batch=args.batch, ffa=False, lr=args.lr)
                 for k, rows in enumerate(train)}
    # FFA-LoRA centralized: how much of the gap is FFA itself (svd trains A and B like the recipe)
    central_ffa_loss = trained_loss(pooled, batch=args.batch * args.nodes, ffa=True, lr=fed_lr) \
        if args.aggregation == "ffa" and not args.no_central_ffa else None
    print(f"centralized: recipe LoRA {central_loss:.4f}, FFA-LoRA {central_ffa_loss}")
    print("each node alone:", {k: round(v, 4) for k, v in alone.items()})

    if local_round is None:
        # ---- overhead: the same local training alone, back to back in this process (model
        # loaded once, as the simulation's actor keeps it; the B tensors reset before each node)
        from datasets import Dataset

        from federation.config import LoraSection
        from federation.models import build_lora_model, get_arrays, set_arrays, travelling_names
        from training.sft import train_sft

        loaded = load_model(args.model)
        ffa_model = build_lora_model(loaded.model, settings.lora, LoraSection())
        zeros = get_arrays(ffa_model, travelling_names(ffa_model, LoraSection()))
        node_sets = [Dataset.from_list(sft_rows(rows)) for rows in train]
        local_seconds = []
        for repeat in range(2):
            t0 = time.perf_counter()
            for dataset in node_sets:
                set_arrays(ffa_model, zeros)
                train_sft(ffa_model, loaded.tokenizer, dataset, settings, max_steps=args.local_steps, learning_rate=fed_lr, seed=repeat)
            local_seconds.append(time.perf_counter() - t0)
        local_round = min(local_seconds)
        del ffa_model, loaded
        gc.collect()

    def round_walls(history: list[dict]) -> list[float]:
        """Wall seconds of rounds 2.. (round 1 also starts the workers and loads the model), without central eval."""
        by_round = {h["round"]: h for h in history}
        return [by_round[r]["seconds"] - by_round[r - 1]["seconds"] - by_round[r].get("eval_seconds", 0.0)
                for r in sorted(by_round) if r >= 2]

    sim_round = statistics.median(round_walls(fed.history))
    deploy_round = None
    if not args.skip_deploy:
        dep = run_deployment(fed_config("deploy", 2))
        deploy_round = statistics.median(round_walls(dep.history))

    comm = fed.communication
    improvement = lambda loss: baseline_loss - loss  # noqa: E731
    results = {
        "command": " ".join(["HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_federation.py", *sys.argv[1:]]),
        "model": args.model,
        "nodes": args.nodes, "held_out": len(held_out), "rounds": args.rounds,
        "local_steps": args.local_steps, "batch": args.batch, "lr": args.lr, "fed_lr": fed_lr,
        "max_length": args.max_length, "per_node": args.per_node,
        "median_reply_chars_by_node": reply_chars,
        "loss": {"base": baseline_loss, "federated": fed_loss, "centralized": central_loss,
                 "centralized_ffa": central_ffa_loss, "alone": alone},
        "improvement_ratio_vs_centralized": improvement(fed_loss) / improvement(central_loss),
        "improvement_ratio_vs_centralized_ffa": improvement(fed_loss) / improvement(central_ffa_loss) if central_ffa_loss else None,
        "aggregation": args.aggregation, "keep_optimizer_state": args.keep_optimizer_state, "strategy": args.strategy, "schedule": args.schedule,
        "fed_schedule": fed_schedule,
        "server_lr": args.server_lr if args.strategy != "fedavg" else None,
        "server_momentum": args.server_momentum if args.strategy == "fedavgm" else None,
        "svd_error": [h.get("svd_error") for h in fed.history] if args.aggregation == "svd" else None,
        "federated_beats_every_node_alone": all(fed_loss < v for v in alone.values()),
        "bytes_per_node_round": comm["mean_per_node_round_bytes"],
        "full_checkpoint_bytes": comm["full_checkpoint_bytes"],
        "bytes_share": comm["mean_per_node_round_bytes"] / comm["full_checkpoint_bytes"],
        "local_training_round_s": local_round,
        "simulation_round_s": sim_round,
        "simulation_overhead": sim_round / local_round - 1,
        "deployment_round_s": deploy_round,
        "deployment_overhead": (deploy_round / local_round - 1) if deploy_round else None,
        "central_eval_s": statistics.median(h.get("eval_seconds", 0.0) for h in fed.history),
    }
    variant = (f"{args.aggregation}-{args.strategy}" + (f"-slr{args.server_lr:g}" if args.strategy != "fedavg" else "")
               + f"-r{args.rounds}x{args.local_steps}" + ("-linear" if args.schedule == "linear" else "")
               + ("-carry" if args.keep_optimizer_state else ""))
    (out / f"results-{variant}-fedlr{fed_lr:g}.json").write_text(json.dumps(results, indent=1))
    if not previous:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
