"""`swarmloop train sft|dpo|kto`: fine-tune a model reference on a node's data and build a checkpoint.

Torch, transformers and TRL are imported inside the command so `--help` stays fast.
"""

from __future__ import annotations

import os
import re
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _dataset_ids(ids: list[str] | None) -> list[str]:
    """--dataset-id values checked as Hub repo ids, duplicates dropped, order kept."""
    from training.config import HUB_REPO_ID

    for repo_id in ids or []:
        if not re.fullmatch(HUB_REPO_ID, repo_id):
            raise UserError(f"--dataset-id {repo_id!r}: expected ORG/NAME (a Hugging Face dataset repo)")
    return list(dict.fromkeys(ids or []))


def _check_writable_parent(out: Path) -> None:
    """The checkpoint is written next to --out at the very end: fail now, not after training.
    Nothing is created here (build_checkpoint makes missing parent folders)."""
    existing = out.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {existing} is not writable")


def _load_data(method: str, store: Optional[Path], data: Optional[Path], consent: str = "share") -> Any:
    from traces.store import StoreError
    from training.data import DatasetFormatError, load_dataset_dir, load_store_dataset

    try:
        if store is not None:
            return load_store_dataset(store, method, consent=consent)
        return load_dataset_dir(data, method)
    except (DatasetFormatError, StoreError) as exc:
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
    dataset_ids: Optional[list[str]] = None,
    signing_key: Optional[Path] = None,
) -> Path:
    """Train, evaluate before and after, build the checkpoint. Every failure the user can fix
    (paths, data, model, template, config) raises UserError with one line."""
    if (store is None) == (data is None):
        raise UserError("pass exactly one of --store DB or --data DIR")
    if consent not in ("share", "local"):
        raise UserError(f"--consent must be share or local, not {consent!r}")
    if store is not None and not store.is_file():
        raise UserError(f"{store}: no such trace store")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new --out folder (checkpoints are never overwritten)")
    dataset_ids = _dataset_ids(dataset_ids)
    _check_writable_parent(out)
    key = None
    if signing_key is not None:  # a bad key file fails now, not after training
        from traces.signing import SigningError, load_or_create_key

        try:
            key = load_or_create_key(signing_key)
        except SigningError as exc:
            raise UserError(f"--signing-key {exc}") from None
    from inference.model_refs import ModelRefError, parse_model_ref
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
    with console.status("loading data…"):  # torch-free: bad data fails before the heavy imports
        import datasets

        from training.data import DatasetFormatError, examples_by_node, load_task_rows

        datasets.disable_progress_bars()
        dataset = _load_data(method, store, data, consent)
        eval_dataset = _load_data(method, None, eval_data) if eval_data is not None else None
        try:
            tasks = load_task_rows(eval_tasks) if eval_tasks is not None else None
        except DatasetFormatError as exc:
            raise UserError(str(exc)) from None
    with console.status("loading libraries and model…"):
        import warnings

        import transformers

        warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not the user's
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        from inference.loading import load_model
        from training.checkpoint import CheckpointError, build_checkpoint, lineage_base, next_version
        from training.dpo import train_dpo
        from training.eval import check_eval_rows, evaluate_dataset, task_accuracy
        from training.kto import train_kto
        from training.sft import check_chat_template, train_sft

        try:
            loaded = load_model(base, dtype="float32")
        except ModelRefError:
            raise  # already one line naming the reference
        except Exception as exc:  # unreadable weights or config: transformers and safetensors raise many types
            raise UserError(f"--base {base}: cannot load the model ({exc.__class__.__name__}: {_first_line(exc)[:200]})") from None
        # Everything that would fail later on this tokenizer fails now, before minutes of work.
        try:
            if not loaded.tokenizer.chat_template:
                raise ValueError("the tokenizer has no chat template; training on conversations needs one")
            if method == "sft":
                check_chat_template(loaded.tokenizer, settings.sft)
        except ValueError as exc:
            raise UserError(f"--base {base}: {_first_line(exc)}") from None
        if eval_dataset is not None:
            try:
                check_eval_rows(loaded.tokenizer, eval_dataset, method, settings.eval)
            except ValueError as exc:
                raise UserError(f"--eval-data {eval_data}: {_first_line(exc)}") from None
    recipe: Callable[..., Any] = {"sft": train_sft, "dpo": train_dpo, "kto": train_kto}[method]
    version = version or next_version(loaded.resolved)

    def evaluate(model: Any, label: str) -> tuple[Any, Any]:
        data_result = task_result = None
        if eval_dataset is not None:
            with console.status(f"evaluating {label} on {len(eval_dataset)} held-out rows…"):
                try:
                    data_result = evaluate_dataset(model, loaded.tokenizer, eval_dataset, method, settings=settings)
                except ValueError as exc:  # our metrics and the tokenizer explain bad rows in one line
                    raise UserError(f"--eval-data {eval_data}: evaluating {label}: {_first_line(exc)}") from None
        if tasks is not None:
            with console.status(f"evaluating {label} on {len(tasks)} tasks (generation + judges)…"):
                try:
                    task_result = task_accuracy(model, loaded.tokenizer, tasks, settings=settings.eval)
                except ValueError as exc:
                    raise UserError(f"--eval-tasks {eval_tasks}: evaluating {label}: {_first_line(exc)}") from None
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
            raise UserError(f"{method}: {_first_line(exc)}") from None

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
                parent=loaded.resolved, training=result.training_summary(examples_by_node=examples_by_node(dataset), public_datasets=dataset_ids),
                eval_metrics=eval_metrics, dtype=settings.checkpoint.dtype, settings=settings.checkpoint,
                signing_key=key,
            )
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:  # disk full, permissions changed during training
            raise UserError(f"--out {out}: cannot write the checkpoint ({exc.strerror or exc})") from None

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
    signed = f", signed by {key.node_id}" if key is not None else ""
    print(f"checkpoint {manifest.version} written to {path} (weights sha256 {manifest.weights_sha256[:16]}…{signed})")
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
        max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help=f"Optimizer steps (overrides max_steps in the config's {method} section)."),
        learning_rate: Optional[float] = typer.Option(None, "--learning-rate", min=0.0, help=f"Peak learning rate (overrides learning_rate in the config's {method} section)."),
        seed: Optional[int] = typer.Option(None, "--seed", help=f"Random seed for LoRA init and data order (overrides seed in the config's {method} section)."),
        version: Optional[str] = typer.Option(None, "--version", help="Version of the new checkpoint, e.g. v3 (default: the base's version + 1)."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="Saved weights dtype: float32 or bfloat16 (overrides dtype in the config's checkpoint section)."),
        dataset_id: Optional[list[str]] = typer.Option(None, "--dataset-id", metavar="ORG/NAME", help="A public Hugging Face dataset holding this training data (e.g. made by `swarmloop traces push --repo-id`); listed in the model card's `datasets` metadata. Repeat for several; the config key checkpoint.datasets adds more."),
        signing_key: Optional[Path] = typer.Option(None, "--signing-key", metavar="PATH", help="The trainer's Ed25519 key file (PEM; created with mode 0600 if missing): sign the checkpoint's manifest (manifest.sig), so nodes that trust this key accept it. Export it with `swarmloop checkpoint trust`."),
    ) -> None:
        run_training(method, store=store, data=data, base=base, consent=consent, out=out, config=config, eval_data=eval_data,
                     eval_tasks=eval_tasks, max_steps=max_steps, learning_rate=learning_rate, seed=seed, version=version, dtype=dtype,
                     dataset_ids=dataset_id, signing_key=signing_key)

    command.__doc__ = _DESCRIPTIONS[method]
    return command


for _method in ("sft", "dpo", "kto"):
    app.command(_method, help=_DESCRIPTIONS[_method])(_command(_method))
