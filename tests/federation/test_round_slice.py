"""Rounds walk a node's data in epochs: every example once before any twice."""

from datasets import Dataset

from federation.dataset import round_slice


def _ids(rows) -> list[int]:
    return list(rows["i"])


def test_rounds_cover_each_epoch_exactly_once_then_reshuffle():
    data = Dataset.from_dict({"i": list(range(32))})
    first_epoch = [i for r in (1, 2) for i in _ids(round_slice(data, r, 16, seed=7))]
    assert sorted(first_epoch) == list(range(32))
    second_epoch = [i for r in (3, 4) for i in _ids(round_slice(data, r, 16, seed=7))]
    assert sorted(second_epoch) == list(range(32))
    assert second_epoch != first_epoch            # a new permutation each epoch
    assert _ids(round_slice(data, 1, 16, seed=7)) == first_epoch[:16]   # deterministic (resume)


def test_a_round_spanning_an_epoch_boundary_and_a_node_smaller_than_a_round():
    data = Dataset.from_dict({"i": list(range(10))})
    # rounds of 6: round 2 takes the last 4 of epoch 0 and the first 2 of epoch 1
    r1, r2 = _ids(round_slice(data, 1, 6, seed=0)), _ids(round_slice(data, 2, 6, seed=0))
    assert sorted(r1 + r2[:4]) == list(range(10))
    tiny = Dataset.from_dict({"i": [0, 1, 2]})
    rows = _ids(round_slice(tiny, 1, 8, seed=0))
    assert len(rows) == 8 and set(rows) == {0, 1, 2}
