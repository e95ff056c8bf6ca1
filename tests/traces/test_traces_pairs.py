"""Preference pairs from feedback and judges; verifier judges; checkable tasks."""

from __future__ import annotations

import pytest

from traces.judges import (
    choice_judge, contains_judge, exact_judge, extract_number, judge_for, make_regex_judge, numeric_judge,
    regex_judge, score,
)
from traces.pairs import judge_store, pairs_from_feedback, trace_task_row
from traces.schemas import Choice, Feedback, Message, ModelInfo, Trace
from traces.store import TraceStore
from traces.tasks import KINDS, generate_tasks, task_metadata

MODEL = ModelInfo(ref="tiny-random", version="v0002", weights_sha256="cd" * 32)


def trace_with(replies: list[str], prompt: str = "What is 6 x 7?", trace_id: str = "chatcmpl-p", **extra) -> Trace:
    return Trace(id=trace_id, node_id="n", model=MODEL, messages=[Message(role="user", content=prompt)],
                 choices=[Choice(index=i, text=r) for i, r in enumerate(replies)], **extra)


def test_choice_gives_one_pair_per_other_distinct_reply():
    trace = trace_with(["42", "41", "42 "])
    pairs, kto = pairs_from_feedback(trace, Feedback(id="f", trace_id=trace.id, choice=0))
    assert [(p.chosen.content, p.rejected.content) for p in pairs] == [("42", "41")]   # "42 " is not different
    assert pairs[0].trace_ids == [trace.id] and pairs[0].feedback_id == "f" and not kto
    assert pairs[0].prompt == trace.messages and pairs[0].model_version == "v0002"


def test_correction_and_thumbs():
    trace = trace_with(["forty", "41"])
    pairs, kto = pairs_from_feedback(trace, Feedback(id="f", trace_id=trace.id, correction="42",
                                                     choice_index=1, thumbs=-1))
    assert [(p.source, p.chosen.content, p.rejected.content) for p in pairs] == [("correction", "42", "41")]
    assert [(k.completion.content, k.label) for k in kto] == [("41", False)]


def test_latest_feedback_replaces_the_earlier_one(db):
    trace = trace_with(["a", "b", "c"])
    with TraceStore(db) as store:
        store.add_traces([trace])
        store.record_feedback(Feedback(id="f1", trace_id=trace.id, choice=0, thumbs=1))
        store.record_feedback(Feedback(id="f2", trace_id=trace.id, choice=2, thumbs=-1))
        dpo = list(store.iter_pairs("dpo"))
        assert sorted((p.chosen.content, p.rejected.content) for p in dpo) == [("c", "a"), ("c", "b")]
        assert [(k.completion.content, k.label) for k in store.iter_pairs("kto")] == [("a", False)]
        assert store.stats()["feedback_by_kind"] == {"choice": 2, "thumbs": 2}


@pytest.mark.parametrize(("judge", "reply", "row", "expected"), [
    (numeric_judge, "6 x 7 = 42.", {"answer": "42"}, 1.0),
    (numeric_judge, "The answer is 42, not 41", {"answer": 42}, 1.0),
    (numeric_judge, "I think 41.", {"answer": "42"}, 0.0),
    (numeric_judge, "It is 1,250 meters", {"answer": "1250"}, 1.0),
    (numeric_judge, "no idea", {"answer": "42"}, 0.0),
    (numeric_judge, "-3.5", {"answer": "-7/2"}, 1.0),
    (exact_judge, "  The Paris. ", {"answer": "Paris"}, 1.0),
    (exact_judge, "Paris is the capital", {"answer": "Paris"}, 0.0),
    (contains_judge, "Paris is the capital", {"answer": "Paris"}, 1.0),
    (contains_judge, "Parisian food", {"answer": "Paris"}, 0.0),
    (contains_judge, "It's Buenos Aires.", {"answers": ["Buenos Aires", "BA"]}, 1.0),
    (choice_judge, "B", {"answer": "B"}, 1.0),
    (choice_judge, "The answer is (C).", {"answer": "C"}, 1.0),
    (choice_judge, "A) Berlin", {"answer": "B"}, 0.0),
    (choice_judge, "It must be Nairobi", {"answer": "A", "options": "Nairobi|Tokyo|Warsaw|Moscow"}, 1.0),
    (regex_judge, "ok: 123-456", {"pattern": r"\d{3}-\d{3}"}, 1.0),
    (regex_judge, "nothing", {"pattern": r"\d{3}-\d{3}"}, 0.0),
])
def test_verifier_judges(judge, reply, row, expected):
    assert judge(reply, row) == expected


def test_regex_judge_factory_and_judge_for():
    assert make_regex_judge(r"^yes\b")("Yes, sure", {}) == 1.0
    assert judge_for({"judge": "numeric"}) is numeric_judge and judge_for({}) is None
    with pytest.raises(ValueError):
        score("x", {"judge": "nope", "answer": "1"})
    assert extract_number("between 3 and 5") == 5


def test_tasks_are_deterministic_checkable_and_split():
    a = generate_tasks(120, seed=4)
    assert a == generate_tasks(120, seed=4) and a != generate_tasks(120, seed=5)
    assert {row["kind"] for row in a} == set(KINDS)
    held_out = generate_tasks(60, seed=4, split="eval")
    train_ids = {r["id"] for s in range(3) for r in generate_tasks(120, seed=s)}
    assert not train_ids & {r["id"] for r in held_out}
    for row in a + held_out:
        assert score(str(row["answer"]), row) == 1.0, row          # the answer passes its own judge
        assert row["messages"] == [{"role": "user", "content": row["prompt"]}]
        meta = task_metadata(row)
        assert all(isinstance(v, str) and len(v) <= 512 for v in meta.values()) and len(meta) <= 16


def test_judges_turn_n_samples_into_pairs(db):
    tasks = generate_tasks(3, seed=1, kinds=["arithmetic"])
    traces = []
    for i, task in enumerate(tasks):
        right = task["answer"]
        traces.append(trace_with([f"It is {int(right) + 1}", f"It is {right}", "no idea"], prompt=task["prompt"],
                                 trace_id=f"chatcmpl-j{i}", metadata=task_metadata(task)))
    traces.append(trace_with(["1", "2"], trace_id="chatcmpl-nojudge"))      # no task metadata: skipped
    with TraceStore(db) as store:
        store.add_traces(traces)
        counts = judge_store(store, with_kto=True)
        assert counts == {"traces": 4, "judged": 3, "pairs": 6, "kto": 9}
        pairs = list(store.iter_pairs("dpo", origin="judge"))
        assert all(p.chosen.content == f"It is {t['answer']}" for p, t in zip(pairs[::2], tasks))
        assert {p.source for p in pairs} == {"judge:numeric"} and pairs[0].score_chosen == 1.0
        judge_store(store)                                                    # again: replaced, not doubled
        assert len(list(store.iter_pairs("dpo"))) == 6
        row = trace_task_row(traces[0])
        assert row["answer"] == tasks[0]["answer"] and row["prompt"] == tasks[0]["prompt"]
