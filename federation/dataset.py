"""A node's training data and the server's held-out set, in TRL's conversational formats.

A node's `data-path` is its trace store (SQLite, read through traces.export: records kept at
consent "local" or "share", already redacted by the node's privacy filter) or, for data exported
earlier with `swarmloop traces export`, a folder of Parquet shards. The rows never leave the node.
DPO pairs can be limited to those the base checkpoint itself produced (client.dpo_pairs_from_base),
so the frozen reference of the recipe is the policy that generated them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


# A node trains on everything its operator opted in for: consent "local" selects local + share
# records (export's default, "share", is for data leaving the node). Ingest checks the same set.
NODE_CONSENT = "local"


class NotEnoughData(Exception):
    """The node has fewer usable examples than a round needs; it sits the round out."""


def load_examples(path: Path | str, method: str, *, model_version: str | None = None,
                  approved_only: bool = False) -> Any:
    """Every usable row at `path` (a store file or an exported folder), checked for `method`,
    with only the columns the recipe reads. `model_version` keeps the rows of traces that model
    version served, `approved_only` (SFT) the replies a user approved (stores only). An empty
    result is NotEnoughData, not an error."""
    from training.data import REQUIRED_COLUMNS, check_dataset, load_dataset_dir

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such trace store or dataset folder")
    if path.is_dir():
        dataset = load_dataset_dir(path, method)
    else:
        from traces.export import to_dataset

        filters = {"approved_only": True} if (approved_only and method == "sft") else {}
        dataset = to_dataset(method, path, model_version=model_version, consent=NODE_CONSENT, **filters)
        if len(dataset) == 0:
            raise NotEnoughData("no usable examples" + (f" from model version {model_version}" if model_version else ""))
        check_dataset(dataset, method)
    return dataset.select_columns(list(REQUIRED_COLUMNS[method]))


def node_dataset(path: Path | str, method: str, *, min_examples: int, max_examples: int | None, seed: int,
                 model_version: str | None = None, approved_only: bool = False) -> Any:
    """The node's rows for this round: all of them, or `max_examples` drawn with `seed`."""
    dataset = load_examples(path, method, model_version=model_version, approved_only=approved_only)
    if len(dataset) < min_examples:
        raise NotEnoughData(f"{len(dataset)} usable examples, fewer than the {min_examples} a round needs")
    if max_examples and len(dataset) > max_examples:
        dataset = dataset.shuffle(seed=seed).select(range(max_examples))
    return dataset


def round_slice(dataset: Any, round_number: int, per_round: int, seed: int) -> Any:
    """The rows round `round_number` (1-based) trains on: the next `per_round` examples of the
    node's walk through its data in epochs (each epoch a permutation drawn from `seed` + epoch).

    Rounds continue where the previous one stopped, as a centralized run's steps do: every example
    is seen once before any is seen twice. Drawing each round's batches afresh instead leaves about
    an eighth of a node's examples unseen after three half-epoch rounds, and repeats others."""
    import numpy as np

    n = len(dataset)
    if per_round <= 0 or n == 0:
        return dataset
    start = (round_number - 1) * per_round
    indices: list[int] = []
    epoch = start // n
    offset = start - epoch * n
    while len(indices) < per_round:
        order = np.random.default_rng(seed + epoch).permutation(n)
        indices.extend(int(i) for i in order[offset:offset + per_round - len(indices)])
        epoch, offset = epoch + 1, 0
    return dataset.select(indices)


def eval_dataset(store: Path | None, data: Path | None, method: str, *, max_examples: int) -> Any | None:
    """The server's held-out set (first `max_examples` rows, fixed across rounds), or None."""
    if store is None and data is None:
        return None
    dataset = load_examples(store if store is not None else data, method)
    if len(dataset) > max_examples:
        dataset = dataset.select(range(max_examples))
    return dataset
