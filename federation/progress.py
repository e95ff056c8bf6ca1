"""rich progress per round, read from the run folder's metrics.json.

Works the same for a simulation (the ServerApp is a thread of this process) and a deployment
(the ServerApp is a process under the SuperLink): both write metrics.json after each round.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from federation.report import read_metrics


def describe(record: dict[str, Any], eval_key: str) -> str:
    parts = [f"round {record['round']}"]
    value = record.get("eval", {}).get(eval_key)
    if value is not None:
        parts.append(f"eval {eval_key} {value:.4f}")
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if record.get("bytes"):
        parts.append(f"{(record['bytes']['down_bytes'] + record['bytes']['up_bytes']) / 1e6:.2f} MB")
    if record.get("epsilon") is not None:
        parts.append(f"ε {record['epsilon']:.2f}")
    skipped = [n for n, i in record.get("nodes", {}).items() if i.get("status") != "used"]
    if skipped:
        parts.append("left out: " + ", ".join(skipped))
    return " · ".join(parts)


class RoundProgress:
    """A context manager showing a progress bar over rounds while a run writes metrics.json."""

    def __init__(self, metrics_path: Path, total_rounds: int, eval_key: str, *, enabled: bool = True, poll_s: float = 0.5):
        self.metrics_path = metrics_path
        self.total = total_rounds
        self.eval_key = eval_key
        self.enabled = enabled
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress: Any = None
        self._seen: set[int] = set()

    def __enter__(self) -> "RoundProgress":
        if not self.enabled:
            return self
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.description}"))
        self._progress.start()
        self._task = self._progress.add_task("waiting for round 1", total=self.total)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def console_print(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def _update(self) -> None:
        for record in read_metrics(self.metrics_path):
            if record["round"] in self._seen:
                continue
            self._seen.add(record["round"])
            done = max((r for r in self._seen), default=0)
            self._progress.update(self._task, completed=min(done, self.total), description=describe(record, self.eval_key))

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._update()

    def __exit__(self, *exc: Any) -> None:
        if self._progress is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._update()
        self._progress.stop()
