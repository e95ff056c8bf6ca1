"""report.md and PNG plots of a loop run, from its LoopResult (metrics.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = ("traces_pairs.png", "federated_loss.png", "heldout_accuracy.png", "swap_pause.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no screen here; PNG only
    import matplotlib.pyplot as plt

    return plt


def dpo_pair_count(stats: dict[str, Any]) -> int:
    """DPO pairs in a store's stats (`pairs.dpo` is a count by origin: choice, correction, judge...)."""
    dpo = (stats.get("pairs") or {}).get("dpo", 0)
    return sum(dpo.values()) if isinstance(dpo, dict) else int(dpo or 0)


def plot_traces_pairs(result: Any, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, traces, pairs = [], [], []
    for record in result.iterations:
        for node, stats in record.stores_before.items():
            labels.append(f"it{record.iteration}\n{node}")
            traces.append(stats.get("traces", 0))
            pairs.append(dpo_pair_count(stats))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], traces, width=0.4, label="traces")
    ax.bar([x + 0.2 for x in xs], pairs, width=0.4, label="DPO pairs")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("records in the node store")
    ax.set_title("Traces and preference pairs per node and iteration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_federated_loss(result: Any, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for record in result.iterations:
        history = record.federation.get("history", [])
        rounds = [offset + h.get("round", i + 1) for i, h in enumerate(history)]
        train = [h.get("train_loss", h.get("train", {}).get("train_loss")) for h in history]
        evals = [next((v for k, v in h.items() if k.startswith("eval") and isinstance(v, (int, float))), None)
                 for h in history]
        if any(v is not None for v in train):
            ax.plot(rounds, train, "o-", label=f"it{record.iteration} train loss")
        if any(v is not None for v in evals):
            ax.plot(rounds, evals, "s--", label=f"it{record.iteration} central eval")
        offset += len(history)
    ax.set_xlabel("federated round")
    ax.set_ylabel("loss")
    ax.set_title("Federated rounds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(result: Any, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    versions = [e.version for e in result.evals]
    acc = [e.task_accuracy * 100 for e in result.evals]
    lower = [(e.task_accuracy - e.task_ci95[0]) * 100 for e in result.evals]
    upper = [(e.task_ci95[1] - e.task_accuracy) * 100 for e in result.evals]
    ax.errorbar(versions, acc, yerr=[lower, upper], fmt="o-", capsize=5)
    ax.set_ylabel("held-out task accuracy (%)")
    ax.set_title("Held-out accuracy per version (95% Wilson CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_swap_pause(result: Any, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels, pauses = [], []
    for record in result.iterations:
        for node, swap in record.swaps.items():
            labels.append(f"it{record.iteration} {node}")
            pauses.append((swap.get("pause_s") or 0.0) * 1000)
    ax.bar(labels, pauses)
    ax.set_ylabel("serving pause (ms)")
    ax.set_title("Hot-swap serving pause per node")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def render_markdown(result: Any) -> str:
    lines = [f"# swarmloop run {result.run_dir.name}", "",
             f"{len(result.nodes)} nodes, {len(result.iterations)} iteration(s), {result.seconds / 60:.1f} min in all.", "",
             "## Held-out evaluation per version", "",
             "| version | task accuracy | 95% CI | tasks | chat loss | by kind |", "|---|---|---|---|---|---|"]
    for e in result.evals:
        kinds = ", ".join(f"{k} {_pct(v)}" for k, v in e.accuracy_by_kind.items())
        lines.append(f"| {e.version} | {_pct(e.task_accuracy)} | {_pct(e.task_ci95[0])} .. {_pct(e.task_ci95[1])} "
                     f"| {e.tasks} | {e.chat_loss:.4f} | {kinds} |")
    lines += ["", "## Iterations", ""]
    for record in result.iterations:
        lines.append(f"### Iteration {record.iteration}: {record.from_version} -> {record.to_version}")
        lines.append("")
        c = record.comparison
        if c is not None:
            lines.append(f"- Held-out accuracy: {c.accuracy_delta * 100:+.1f} points, paired 95% CI "
                         f"{c.accuracy_delta_ci95[0] * 100:+.1f} .. {c.accuracy_delta_ci95[1] * 100:+.1f} (n = {c.n_tasks}); "
                         + ("the interval excludes zero." if c.improved_significantly else "the interval does not exclude zero."))
            lines.append(f"- Held-out chat loss: {c.chat_loss_delta:+.4f}, paired 95% CI {c.chat_loss_delta_ci95[0]:+.4f} .. "
                         f"{c.chat_loss_delta_ci95[1]:+.4f}" + (" (a regression beyond the interval)" if c.chat_regressed_significantly else ""))
        phases = ", ".join(f"{k} {v:.0f} s" for k, v in record.phases_s.items())
        lines.append(f"- Time: {record.seconds / 60:.1f} min ({phases})")
        lines += ["", "| node | requests | failed | task samples correct | feedback | traces in store | DPO pairs (judge) | swap pause | new traces on new version |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for w in record.workload:
            node = w["node"]
            stats = record.stores_before.get(node, {})
            judged = record.judged.get(node, {})
            swap = record.swaps.get(node, {})
            pause = swap.get("pause_s")
            lines.append(f"| {node} | {w['requests']} | {w['failed']} | {w['task_samples_correct']}/{w['task_samples']} "
                         f"| {w['feedback_sent']} ({w.get('chat_corrections', 0)} chat, {w.get('task_corrections', 0)} task edits) | {stats.get('traces', '?')} | {judged.get('pairs', 0)} "
                         f"| {'?' if pause is None else f'{pause * 1000:.0f} ms'} | {record.new_traces_by_node.get(node, 0)} |")
        fed = record.federation
        comm = fed.get("communication", {})
        lines += ["", f"- Federated run: {fed.get('mode')} {fed.get('method')}, {fed.get('rounds')} round(s), "
                  f"examples by node {fed.get('examples_by_node')}, {fed.get('seconds', 0):.0f} s.",
                  f"- Communication: {comm}", f"- Central eval: before {fed.get('baseline_eval')}, after {fed.get('eval')}"]
        lines += integrity_lines(fed) + [""]
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in PLOTS] + [""]
    return "\n".join(lines)


def integrity_lines(fed: dict[str, Any]) -> list[str]:
    """Who signed the checkpoint, what each node's verified ingest found, which updates were rejected."""
    integrity = fed.get("integrity") or {}
    signer = fed.get("signed_by")
    named = f"the {fed['signed_by_name']} ({signer})" if signer and fed.get("signed_by_name") else signer
    lines = [f"- Checkpoint signed by: {named or 'nobody (unsigned)'}"]
    for name, entry in sorted((integrity.get("ingest") or {}).get("nodes", {}).items()):
        lines.append(f"- Ingest {name}: {entry.get('verified', 0)}/{entry.get('records_checked', 0)} records with a good "
                     f"signature, proofs {entry.get('proofs_passed', 0)} passed / {entry.get('proofs_failed', 0)} failed / "
                     f"{entry.get('proofs_unverifiable', 0)} unverifiable, excluded in {entry.get('rounds_excluded', 0)} "
                     f"of {entry.get('rounds', 0)} rounds")
    for name, reasons in sorted((integrity.get("rejected_updates") or {}).items()):
        lines.append(f"- Rejected updates from {name}: {'; '.join(reasons)}")
    return lines


def write_report(result: Any, run_dir: Path) -> Path:
    for name, plot in zip(PLOTS, (plot_traces_pairs, plot_federated_loss, plot_accuracy, plot_swap_pause)):
        plot(result, run_dir / name)
    path = run_dir / "report.md"
    path.write_text(render_markdown(result))
    return path
