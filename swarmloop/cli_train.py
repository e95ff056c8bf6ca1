"""`swarmloop train sft|dpo|kto`: fine-tune a model reference on a node's data and build a checkpoint.

Torch, transformers and TRL are imported inside the command so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import typer

from swarmloop.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

_DESCRIPTIONS = {
    "sft": "Supervised fine-tuning on chat conversations ({'messages': [...]}); loss on assistant tokens only.",
    "dpo": "Direct preference optimization on pairs ({'prompt', 'chosen', 'rejected'}); reference = the base.",
    "kto": "KTO on single replies labelled good or bad ({'prompt', 'completion', 'label'}).",
}


def _progress_callback(progress: Any, task: Any) -> Any:
    """A transformers TrainerCallback that moves a rich progress bar one step at a time."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            progress.update(task, total=state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            progress.update(task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                progress.update(task, description=f"training · loss {logs['loss']:.4f}")

    return RichProgress()


def _metrics_table(title: str, columns: list[str], rows: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
    return str(value)


def _load_data(method: str, store: Optional[Path], data: Optional[Path], consent: str = "share") -> Any:
    from training.data import DatasetFormatError, load_dataset_dir, load_store_dataset

    try:
        if store is not None:
            return load_store_dataset(store, method, consent=consent)
        return load_dataset_dir(data, method)
    except DatasetFormatError as exc:
        raise UserError(str(exc)) from None


def run_training(
    method: str,
    *,
    store: Optional[Path],
    data: Optional[Path],
    base: str,
    consent: str = "share",
    out: Path,
    config: Optional[Path],
    eval_data: Optional[Path],
    eval_tasks: Optional[Path] = None,
    max_steps: Optional[int] = None,
    learning_rate: Optional[float] = None,
    seed: Optional[int] = None,
    version: Optional[str] = None,
    dtype: Optional[str] = None,
) -> Path:
    if (store is None) == (data is None):
        raise UserError("pass exactly one of --store DB or --data DIR")
    if consent not in ("share", "local"):
        raise UserError(f"--consent must be share or local, not {consent!r}")
    if store is not None and not store.is_file():
        raise UserError(f"{store}: no such trace store")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out folder (checkpoints are never overwritten)")
    from inference.model_refs import parse_model_ref
    from training.config import load_training_settings
    from training.registry import RegistryError, normalize_version

    parse_model_ref(base)  # a malformed reference fails before any heavy import
    if version is not None:
        try:
            version = normalize_version(version)
        except RegistryError as exc:
            raise UserError(str(exc)) from None
    settings = load_training_settings(config, {"checkpoint.dtype": dtype})

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with console.status("loading libraries, data and model…"):
        import warnings

        import datasets
        import transformers

        warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's
        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        from inference.loading import load_model
        from training.checkpoint import CheckpointError, build_checkpoint, lineage_base, next_version
        from training.data import DatasetFormatError, examples_by_node, load_task_rows
        from training.dpo import train_dpo
        from training.eval import evaluate_dataset, task_accuracy
        from training.kto import train_kto
        from training.sft import train_sft

        dataset = _load_data(method, store, data, consent)
        eval_dataset = _load_data(method, None, eval_data) if eval_data is not None else None
        try:
            tasks = load_task_rows(eval_tasks) if eval_tasks is not None else None
        except DatasetFormatError as exc:
            raise UserError(str(exc)) from None
        loaded = load_model(base, dtype="float32")
    recipe: Callable[..., Any] = {"sft": train_sft, "dpo": train_dpo, "kto": train_kto}[method]
    version = version or next_version(loaded.resolved)

    def evaluate(model: Any, label: str) -> tuple[Any, Any]:
        data_result = task_result = None
        if eval_dataset is not None:
            with console.status(f"evaluating {label} on {len(eval_dataset)} held-out rows…"):
                data_result = evaluate_dataset(model, loaded.tokenizer, eval_dataset, method, settings=settings)
        if tasks is not None:
            with console.status(f"evaluating {label} on {len(tasks)} tasks (generation + judges)…"):
                task_result = task_accuracy(model, loaded.tokenizer, tasks, settings=settings.eval)
        return data_result, task_result

    before, tasks_before = evaluate(loaded.model, loaded.identity.ref)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console)
    with progress:
        task = progress.add_task("training", total=None)
        try:
            result = recipe(loaded.model, loaded.tokenizer, dataset, settings, max_steps=max_steps,
                            learning_rate=learning_rate, seed=seed, callbacks=[_progress_callback(progress, task)])
        except ValueError as exc:  # TRL and our recipes explain bad data or settings in one line
            raise UserError(f"{method}: {str(exc).splitlines()[0]}") from None

    after, tasks_after = evaluate(result.model, "the trained model")
    eval_metrics: dict[str, Any] = {}
    if after is not None:
        eval_metrics["heldout"] = {"data": str(eval_data), "kind": method, "before": before.metrics, "after": after.metrics}
    if tasks_after is not None:
        eval_metrics["tasks"] = {"data": str(eval_tasks), "before": tasks_before.metrics, "after": tasks_after.metrics}

    with console.status("merging and writing the checkpoint…"):
        try:
            path = build_checkpoint(
                result.model, loaded.tokenizer, out, version=version, base_model=lineage_base(loaded.resolved),
                parent=loaded.resolved, training=result.training_summary(examples_by_node=examples_by_node(dataset)),
                eval_metrics=eval_metrics, dtype=settings.checkpoint.dtype, settings=settings.checkpoint,
            )
        except CheckpointError as exc:
            raise UserError(str(exc)) from None

    out_console = Console()
    keys = [k for k in ("first_loss", "last_loss", "train_loss", "steps", "examples", "seconds", "seconds_per_step",
                        "rewards/accuracies", "rewards/margins", "kl") if k in result.metrics]
    out_console.print(_metrics_table(f"{method} on {loaded.identity.ref} ({loaded.identity.version})",
                                     ["metric", "value"], [[k, _fmt(result.metrics[k])] for k in keys]))
    for title, first, last in ((f"held-out evaluation ({eval_data})", before, after),
                               (f"task evaluation ({eval_tasks})", tasks_before, tasks_after)):
        if first is not None and last is not None:
            rows = [[k, _fmt(first.metrics[k]), _fmt(last.metrics[k])] for k in last.metrics if k in first.metrics]
            out_console.print(_metrics_table(title, ["metric", "before", "after"], rows))
    from training.manifest import read_manifest

    manifest = read_manifest(path)
    print(f"checkpoint {manifest.version} written to {path} (weights sha256 {manifest.weights_sha256[:16]}…)")
    return path


def _command(method: str) -> Callable[..., None]:
    def command(
        store: Optional[Path] = typer.Option(None, "--store", help="A node's trace store (SQLite); rows are exported with traces.export."),
        consent: str = typer.Option("share", "--consent", help="With --store: share (default) takes only traces the operator agreed to share; local also takes local-only ones."),
        data: Optional[Path] = typer.Option(None, "--data", help=f"A folder of Parquet/JSONL files (or one file) in TRL's conversational {method} format."),
        base: str = typer.Option("embedded:smollm2-135m-instruct", "--base", help="Model reference to start from: embedded:NAME, tiny-random, a folder, registry:PATH(@vN), hf:ORG/NAME(@rev)."),
        out: Path = typer.Option(..., "--out", help="Folder for the new checkpoint (must not exist); written atomically."),
        config: Optional[Path] = typer.Option(None, "--config", help="Training config TOML (default: configs/training.toml)."),
        eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Held-out data in the same format: evaluated before and after, printed as a table, stored in the manifest."),
        eval_tasks: Optional[Path] = typer.Option(None, "--eval-tasks", help="Held-out tasks with answers (traces.tasks rows, Parquet/JSONL): accuracy of generated replies by their judges, before and after."),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help=f"Optimizer steps (overrides [{method}] max_steps)."),
        learning_rate: Optional[float] = typer.Option(None, "--learning-rate", min=0.0, help=f"Peak learning rate (overrides [{method}] learning_rate)."),
        seed: Optional[int] = typer.Option(None, "--seed", help=f"Random seed for LoRA init and data order (overrides [{method}] seed)."),
        version: Optional[str] = typer.Option(None, "--version", help="Version of the new checkpoint, e.g. v3 (default: the base's version + 1)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="Saved weights dtype: float32 or bfloat16 (overrides [checkpoint] dtype)."),
    ) -> None:
        run_training(method, store=store, data=data, base=base, consent=consent, out=out, config=config, eval_data=eval_data,
                     eval_tasks=eval_tasks, max_steps=max_steps, learning_rate=learning_rate, seed=seed, version=version, dtype=dtype)

    command.__doc__ = _DESCRIPTIONS[method]
    return command


for _method in ("sft", "dpo", "kto"):
    app.command(_method, help=_DESCRIPTIONS[_method])(_command(_method))
