"""The conductor: serve → collect → federate → publish → redeploy → evaluate, for N iterations.

    swarmloop loop --config configs/loop.toml

1. Starts N real nodes (`swarmloop node serve` subprocesses on loopback), each with its own
   port, trace store and consent `local`, all following one checkpoint registry.
2. Each iteration: drives a workload through them with the openai client (real chat prompts and
   checkable tasks with n > 1 samples, plus simulated user feedback), lets each node's verifier
   judges turn its samples into preference pairs, runs federated rounds over the node stores
   (Flower deployment by default, simulation selectable), which build and publish v(N+1) to the
   registry; waits until every node serves it, checks new traces say v(N+1), and evaluates vN
   against v(N+1) on held-out tasks and conversations the workload never saw.
3. Writes report.md, metrics.json and PNG plots into the run folder. Every process it started is
   stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, Field

from swarmloop.evaluation import Comparison, VersionEval, compare, evaluate_version
from swarmloop.loop_config import LoopConfig
from swarmloop.node_process import NodeProcess, start_node
from swarmloop.workload import NodeWorkloadResult, build_items, drive_node, held_out_conversations
from traces.signing import TrustedKeys, load_or_create_key

log = logging.getLogger("swarmloop.loop")


class IterationRecord(BaseModel):
    iteration: int
    from_version: str
    to_version: str | None = None
    phases_s: dict[str, float] = Field(default_factory=dict)
    workload: list[dict[str, Any]] = Field(default_factory=list)
    judged: dict[str, dict[str, int]] = Field(default_factory=dict)
    stores_before: dict[str, dict[str, Any]] = Field(default_factory=dict)
    federation: dict[str, Any] = Field(default_factory=dict)
    swaps: dict[str, dict[str, Any]] = Field(default_factory=dict)
    new_traces_by_node: dict[str, int] = Field(default_factory=dict)
    comparison: Comparison | None = None
    seconds: float = 0.0


class LoopResult(BaseModel):
    run_dir: Path
    config: dict[str, Any]
    started_at: str
    nodes: list[str]
    evals: list[VersionEval] = Field(default_factory=list)
    iterations: list[IterationRecord] = Field(default_factory=list)
    seconds: float = 0.0
    finished: bool = False


class Phase:
    """Times a phase and reports it to the progress display."""

    def __init__(self, record: IterationRecord | None, name: str, show: Callable[[str], None]):
        self.record, self.name, self.show = record, name, show

    def __enter__(self) -> "Phase":
        self.started = time.monotonic()
        self.show(self.name)
        return self

    def __exit__(self, *exc: Any) -> None:
        seconds = time.monotonic() - self.started
        if self.record is not None:
            self.record.phases_s[self.name] = round(seconds, 2)


def new_run_dir(root: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = root / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stamp}-{suffix}"
    path.mkdir(parents=True)
    return path


def node_config(config: LoopConfig, name: str, store: Path, registry: Path, admin_token: str,
                trusted_trainer: Path | None = None) -> dict[str, Any]:
    section = config.nodes
    redeploy: dict[str, Any] = {"registry": f"registry:{registry}", "poll_interval_s": section.poll_interval_s,
                                "admin_token": admin_token}
    if trusted_trainer is not None:
        redeploy["trusted_keys"] = str(trusted_trainer)     # only checkpoints the trainer signed
    return {
        "consent": section.consent,
        "store": str(store),
        "node_id": name,
        "model": {"ref": config.loop.model, "dtype": section.dtype, "threads": section.threads},
        "limits": dict(section.limits),
        "redeploy": redeploy,
        "integrity": {"proofs": section.proofs},
    }


def trainer_key(run_dir: Path) -> tuple[Path, Path]:
    """The trainer's signing key (created, 0600) and a trusted-keys file naming its public key."""
    key_path = run_dir / "keys" / "trainer.key"
    key = load_or_create_key(key_path)
    trusted = run_dir / "keys" / "trusted-trainer.toml"
    trusted.write_text(TrustedKeys.of(key, names=["trainer"]).to_toml())
    return key_path, trusted


def collect_node_keys(nodes: list[NodeProcess], path: Path) -> Path:
    """The federation's allow-list: each node's public key (GET /admin/identity), named like the node."""
    keys = {}
    for node in nodes:
        response = node.get("/admin/identity")
        response.raise_for_status()
        keys[node.name] = response.json()["public_key"]
    path.write_text(TrustedKeys(keys).to_toml())
    return path


def start_nodes(config: LoopConfig, run_dir: Path, registry: Path, stack: ExitStack,
                trusted_trainer: Path | None = None) -> list[NodeProcess]:
    """Start every node at once (they load in parallel), then wait until each is healthy."""
    token = secrets.token_hex(16)
    nodes = []
    for index in range(config.loop.nodes):
        name = f"node-{index + 1}"
        workdir = run_dir / "nodes" / name
        workdir.mkdir(parents=True, exist_ok=True)
        port = config.nodes.base_port + index if config.nodes.base_port else None
        node = start_node(
            None, port=port, workdir=workdir, wait_ready=False, name=name,
            config=node_config(config, name, workdir / "traces.db", registry, token, trusted_trainer),
        )
        stack.callback(node.stop)
        nodes.append(node)
    for node in nodes:
        node.wait_ready(config.nodes.startup_timeout_s)
    return nodes


def wait_for_version(nodes: list[NodeProcess], version: str, timeout: float) -> dict[str, dict[str, Any]]:
    """Wait until every node serves `version` for good (verified, loaded, swapped and past its
    post-swap health check); a node that refuses it raises at once with the node's reason."""
    from concurrent.futures import ThreadPoolExecutor

    from inference.hotswap_client import wait_until_serving

    started = time.monotonic()

    def one(node: NodeProcess) -> dict[str, Any]:
        status = wait_until_serving(node.base_url, version, timeout_s=timeout)
        return {"waited_s": round(time.monotonic() - started, 2), **(status.get("last_swap") or {})}

    with ThreadPoolExecutor(len(nodes)) as pool:
        return dict(zip([n.name for n in nodes], pool.map(one, nodes)))


def store_summary(path: Path) -> dict[str, Any]:
    from traces.store import TraceStore

    with TraceStore(path, readonly=True) as store:
        stats = store.stats()
    return stats if isinstance(stats, dict) else stats.model_dump()


def traces_of_version(path: Path, version: str) -> int:
    from traces.store import TraceStore

    with TraceStore(path, readonly=True) as store:
        return sum(1 for _ in store.iter_records(model_version=version))


def judge_node_stores(nodes: list[NodeProcess]) -> dict[str, dict[str, int]]:
    """Each node's verifier judges turn its n > 1 task samples into DPO pairs (node-local work)."""
    from traces.pairs import judge_store
    from traces.store import TraceStore

    counts = {}
    for node in nodes:
        with TraceStore(node.store) as store:
            counts[node.name] = judge_store(store)
    return counts


def federation_config(config: LoopConfig, base: str, nodes: list[NodeProcess], run_dir: Path, registry: Path,
                      heldout_chat: Path, signing_key: Path | None = None, trusted_nodes: Path | None = None):
    from federation.config import FederationConfig

    data: dict[str, Any] = json.loads(json.dumps(config.federation))   # a deep copy
    data["base"] = base
    data["nodes"] = [{"name": node.name, "store": str(node.store)} for node in nodes]
    data["run"] = {"dir": str(run_dir), "resume": True}
    data["publish"] = {"registry": str(registry), "promote": True,
                       **({"signing_key": str(signing_key)} if signing_key else {})}
    if trusted_nodes is not None:
        integrity = data.setdefault("integrity", {})
        integrity["trusted_node_keys"] = str(trusted_nodes)
        integrity["require_signatures"] = True
    data.setdefault("eval", {}).setdefault("data", str(heldout_chat))
    return FederationConfig.model_validate(data).resolved()


def run_federation(config: LoopConfig, fed_config: Any) -> Any:
    if config.loop.runtime == "simulation":
        from federation.sim import run_simulation

        return run_simulation(fed_config, progress=True)
    from federation.deploy import run_deployment

    return run_deployment(fed_config, progress=True)


def probe_new_version(nodes: list[NodeProcess], count: int) -> None:
    """A few real requests after the swap, so each store holds traces the new version served."""
    for node in nodes:
        client = node.client(timeout=120)
        for i in range(count):
            client.chat.completions.create(
                model=node.model, max_tokens=16, temperature=0.0,
                messages=[{"role": "user", "content": f"Say hello to user number {i + 1}."}])


def run_loop(config: LoopConfig, *, show: Callable[[str], None] = print) -> LoopResult:
    from traces.tasks import generate_tasks

    started = time.monotonic()
    run_dir = new_run_dir(config.loop.run_dir.expanduser().resolve())
    registry = run_dir / "registry"
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    result = LoopResult(run_dir=run_dir, config=config.model_dump(mode="json"),
                        started_at=datetime.now(timezone.utc).isoformat(), nodes=[])
    eval_kinds = config.eval.task_kinds or config.workload.task_kinds
    heldout_tasks = generate_tasks(config.eval.tasks, seed=config.loop.seed, kinds=eval_kinds, split="eval")
    heldout_chat = held_out_conversations(config.eval.chat_conversations)
    # A folder (not a bare file): federation reads a folder of JSONL/Parquet as a dataset.
    heldout_chat_path = run_dir / "eval" / "heldout_chat"
    heldout_chat_path.mkdir(parents=True, exist_ok=True)
    (heldout_chat_path / "conversations.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in heldout_chat))

    def evaluate(ref: str) -> VersionEval:
        return evaluate_version(ref, heldout_tasks, heldout_chat, batch_size=config.eval.batch_size,
                                max_new_tokens=config.eval.max_new_tokens, max_length=config.eval.max_length)

    def save() -> None:
        result.seconds = round(time.monotonic() - started, 1)
        tmp = run_dir / "metrics.json.tmp"
        tmp.write_text(result.model_dump_json(indent=2))
        tmp.replace(run_dir / "metrics.json")

    signing_key, trusted_trainer = trainer_key(run_dir) if config.integrity.sign_checkpoints else (None, None)
    with ExitStack() as stack:
        with Phase(None, f"starting {config.loop.nodes} nodes on {config.loop.model}", show):
            nodes = start_nodes(config, run_dir, registry, stack, trusted_trainer)
        result.nodes = [node.name for node in nodes]
        trusted_nodes = (collect_node_keys(nodes, run_dir / "keys" / "trusted-nodes.toml")
                         if config.integrity.verify_ingest else None)
        with Phase(None, f"evaluating {config.loop.model} on {len(heldout_tasks)} held-out tasks", show):
            current_ref = config.loop.model
            result.evals.append(evaluate(current_ref))
        save()
        for iteration in range(1, config.loop.iterations + 1):
            record = IterationRecord(iteration=iteration, from_version=result.evals[-1].version)
            result.iterations.append(record)
            it_started = time.monotonic()
            with Phase(record, "workload", lambda name: show(f"iteration {iteration}: driving the workload through {len(nodes)} nodes")):
                record.workload = [w.__dict__ for w in drive_all(config, nodes, iteration)]
            with Phase(record, "judge", lambda name: show(f"iteration {iteration}: judging n>1 samples into preference pairs")):
                record.judged = judge_node_stores(nodes)
                record.stores_before = {node.name: store_summary(node.store) for node in nodes}
            with Phase(record, "federate", lambda name: show(f"iteration {iteration}: federated {config.federation.get('method', 'sft')} over {len(nodes)} node stores ({config.loop.runtime})")):
                fed_config = federation_config(config, current_ref, nodes, run_dir / f"fed-{iteration}", registry,
                                               heldout_chat_path, signing_key, trusted_nodes)
                fed = run_federation(config, fed_config)
                record.federation = fed.model_dump(mode="json")
                if trusted_trainer is not None and fed.signed_by:
                    # the name the nodes' trusted-keys file gives the signer ("trainer")
                    named = TrustedKeys.from_toml(trusted_trainer).by_node_id(fed.signed_by)
                    record.federation["signed_by_name"] = named[0] if named else None
            if fed.version is None or fed.published is None:
                raise RuntimeError(f"the federated run of iteration {iteration} published no checkpoint")
            record.to_version = fed.version
            with Phase(record, "redeploy", lambda name: show(f"iteration {iteration}: waiting until every node serves {fed.version}")):
                record.swaps = wait_for_version(nodes, fed.version, config.nodes.swap_timeout_s)
            with Phase(record, "probe", lambda name: show(f"iteration {iteration}: checking new traces say {fed.version}")):
                probe_new_version(nodes, config.nodes.probe_requests)
                time.sleep(0.5)  # the background writers commit within milliseconds
                record.new_traces_by_node = {node.name: traces_of_version(node.store, fed.version) for node in nodes}
            current_ref = f"registry:{registry}@{fed.version}"
            with Phase(record, "evaluate", lambda name: show(f"iteration {iteration}: evaluating {fed.version} against {record.from_version}")):
                result.evals.append(evaluate(current_ref))
                record.comparison = compare(result.evals[-2], result.evals[-1])
            record.seconds = round(time.monotonic() - it_started, 1)
            save()
            show(summary_line(record))
    result.finished = True
    save()
    from swarmloop.loop_report import write_report

    write_report(result, run_dir)
    return result


def drive_all(config: LoopConfig, nodes: list[NodeProcess], iteration: int) -> list[NodeWorkloadResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    plans = [build_items(config.workload, node_index=i, iteration=iteration) for i in range(len(nodes))]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        bars = [progress.add_task(f"{node.name} requests", total=len(items)) for node, items in zip(nodes, plans)]

        async def everything() -> list[NodeWorkloadResult]:
            return await asyncio.gather(*(
                drive_node(node.name, node.base_url, node.model, items, config.workload,
                           on_done=lambda bar=bar: progress.advance(bar))
                for node, items, bar in zip(nodes, plans, bars)))

        return asyncio.run(everything())


def summary_line(record: IterationRecord) -> str:
    c = record.comparison
    if c is None:
        return f"iteration {record.iteration}: {record.from_version} -> {record.to_version}"
    lo, hi = c.accuracy_delta_ci95
    return (f"iteration {record.iteration}: {c.old} -> {c.new}: held-out accuracy {c.accuracy_delta * 100:+.1f} points "
            f"(95% CI {lo * 100:+.1f} .. {hi * 100:+.1f}, n={c.n_tasks}), chat loss {c.chat_loss_delta:+.3f}, "
            f"{record.seconds / 60:.1f} min")
