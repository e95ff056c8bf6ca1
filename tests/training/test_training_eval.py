"""Evaluation functions: held-out loss on assistant tokens, preference metrics, task accuracy."""

from __future__ import annotations

import copy
import math

import pytest
from training_rows import dpo_rows, sft_rows

from training.config import EvalSettings
from training.eval import (
    generate_replies,
    heldout_loss,
    label_reward_gap,
    preference_accuracy,
    task_accuracy,
    wilson_interval,
)


def test_wilson_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_heldout_loss_counts_only_assistant_tokens(sft_trained):
    loaded, result, _ = sft_trained
    rows = sft_rows(2)
    longer_user = [{"messages": [{"role": "user", "content": r["messages"][0]["content"] * 20}, r["messages"][1]]}
                   for r in rows]
    short, long = heldout_loss(result.model, loaded.tokenizer, rows), heldout_loss(result.model, loaded.tokenizer, longer_user)
    assert short.metrics["tokens"] == long.metrics["tokens"]  # the user's words are never labelled
    assert len(short.per_example) == 2 and all(e["tokens"] > 0 for e in short.per_example)
    batched = heldout_loss(result.model, loaded.tokenizer, rows, EvalSettings(batch_size=1))
    assert batched.metrics["loss"] == pytest.approx(short.metrics["loss"], abs=1e-4)  # padding changes nothing


def test_preference_rewards_are_log_ratios_against_the_reference(sft_trained):
    from inference.loading import load_model

    loaded, result, _ = sft_trained
    plain = load_model("tiny-random").model
    alone = preference_accuracy(plain, loaded.tokenizer, dpo_rows(4), beta=0.5)
    assert alone.metrics["reward_margin"] == 0.0 and alone.metrics["preference_accuracy"] == 0.0  # its own reference
    assert alone.metrics["logp_margin"] != 0.0  # the reference-free view still says something
    forward = preference_accuracy(plain, loaded.tokenizer, dpo_rows(4), beta=0.5, reference=result.model)
    backward = preference_accuracy(result.model, loaded.tokenizer, dpo_rows(4), beta=0.5, reference=plain)
    adapter_off = preference_accuracy(result.model, loaded.tokenizer, dpo_rows(4), beta=0.5)
    assert forward.metrics["reward_margin"] == pytest.approx(-backward.metrics["reward_margin"], abs=1e-4)
    assert backward.metrics["reward_margin"] == pytest.approx(adapter_off.metrics["reward_margin"], abs=1e-4)
    for row in backward.per_example:
        assert row["margin"] == pytest.approx(row["reward_chosen"] - row["reward_rejected"])
        assert row["correct"] == (row["margin"] > 0)


def _as_kto(pairs):
    """Each preference pair as two labelled single replies: chosen desirable, rejected not."""
    return ([{"prompt": p["prompt"], "completion": p["chosen"], "label": True} for p in pairs]
            + [{"prompt": p["prompt"], "completion": p["rejected"], "label": False} for p in pairs])


def test_label_reward_gap_scores_kto_rows_like_the_dpo_rewards(sft_trained):
    from inference.loading import load_model

    loaded, result, _ = sft_trained
    pairs, rows = dpo_rows(4), _as_kto(dpo_rows(4))
    # the same completions, scored as pairs and as labelled rows, give the same implicit rewards
    dpo = preference_accuracy(result.model, loaded.tokenizer, pairs, beta=0.5)
    kto = label_reward_gap(result.model, loaded.tokenizer, rows, beta=0.5)
    assert abs(kto.metrics["reward_gap"]) > 1e-4  # the SFT adapter moved the policy off its reference
    assert kto.metrics["reward_desirable"] == pytest.approx(dpo.metrics["reward_chosen"], abs=1e-5)
    assert kto.metrics["reward_undesirable"] == pytest.approx(dpo.metrics["reward_rejected"], abs=1e-5)
    assert kto.metrics["reward_gap"] == pytest.approx(dpo.metrics["reward_margin"], abs=1e-5)
    assert [e["reward"] for e in kto.per_example] == pytest.approx(
        [e["reward_chosen"] for e in dpo.per_example] + [e["reward_rejected"] for e in dpo.per_example], abs=1e-5)
    assert kto.metrics["examples"] == 8 and [e["label"] for e in kto.per_example] == [True] * 4 + [False] * 4
    for row in kto.per_example:
        assert row["correct"] == ((row["reward"] > 0) == row["label"])
    assert kto.metrics["label_accuracy"] == pytest.approx(sum(kto.correct) / 8)

    # a plain model is its own reference: every reward 0, so only the undesirable rows count as right
    plain = load_model("tiny-random").model
    alone = label_reward_gap(plain, loaded.tokenizer, rows)
    assert alone.metrics["reward_gap"] == 0.0 and alone.metrics["label_accuracy"] == 0.5
    # an explicit reference: swapping policy and reference flips the sign; the adapter-disabled
    # model is the same reference as the plain base
    forward = label_reward_gap(plain, loaded.tokenizer, rows, beta=0.5, reference=result.model)
    assert forward.metrics["reward_gap"] == pytest.approx(-kto.metrics["reward_gap"], abs=1e-4)
    backward = label_reward_gap(result.model, loaded.tokenizer, rows, beta=0.5, reference=plain)
    assert backward.metrics["reward_gap"] == pytest.approx(kto.metrics["reward_gap"], abs=1e-4)
    only_good = label_reward_gap(result.model, loaded.tokenizer, rows[:4], beta=0.5)
    assert math.isnan(only_good.metrics["reward_gap"]) and math.isnan(only_good.metrics["reward_undesirable"])


def test_eval_rows_are_checked_before_any_model_work(sft_trained):
    from training.eval import check_eval_rows

    loaded, _, _ = sft_trained
    check_eval_rows(loaded.tokenizer, sft_rows(1), "sft")
    check_eval_rows(loaded.tokenizer, dpo_rows(1), "dpo")
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(ValueError, match=r"held-out loss needs a chat template with \{% generation %\} markers"):
        check_eval_rows(tokenizer, sft_rows(1), "sft")
    check_eval_rows(tokenizer, dpo_rows(1), "dpo")  # completion log-probs need no markers
    check_eval_rows(tokenizer, _as_kto(dpo_rows(1)), "kto")


def test_task_accuracy_uses_the_task_judges_and_batched_generation_is_exact(sft_trained):
    from traces.tasks import generate_tasks

    loaded, result, _ = sft_trained
    tasks = generate_tasks(4, seed=0, split="eval")
    settings = EvalSettings(max_new_tokens=8, batch_size=4)
    seen = []

    def judge(reply, row):
        seen.append((reply, row["id"]))
        return 1.0 if row["id"] in (tasks[0]["id"], tasks[2]["id"]) else 0.0

    scored = task_accuracy(result.model, loaded.tokenizer, tasks, judge, settings)
    assert scored.metrics["task_accuracy"] == 0.5 and scored.correct == [True, False, True, False]
    assert [task_id for _, task_id in seen] == [t["id"] for t in tasks]
    one_by_one = [generate_replies(result.model, loaded.tokenizer, [t["messages"]], EvalSettings(max_new_tokens=8))[0]
                  for t in tasks]
    assert [e["reply"] for e in scored.per_example] == one_by_one  # left padding does not change greedy replies
    verified = task_accuracy(result.model, loaded.tokenizer, tasks, settings=settings)  # traces.judges by row
    assert verified.metrics["examples"] == 4 and 0.0 <= verified.metrics["task_accuracy"] <= 1.0
    assert not result.model.training
