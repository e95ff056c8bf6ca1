"""Evaluation: held-out SFT loss, DPO preference accuracy and reward margin, task accuracy by judges.

Every function returns an EvalResult: `metrics`, a plain dict of floats, and `per_example`, one dict
per row (the loop computes confidence intervals from it; `wilson_interval` is here for that).

Tokenization follows the trainers exactly, so the numbers mean what the training loss means:
- held-out loss: the chat template's generation-marked assistant tokens only (as `assistant_only_loss`);
- completion log-probs: prompt rendered with the generation prompt, the completion is what follows
  the common prefix of prompt and prompt+completion (as TRL's DPO/KTO tokenization), kept from the
  start when too long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any, Callable, Iterable, Sequence

from training.config import EvalSettings

Judge = Callable[[str, dict], float]   # (reply, task row) -> score in [0, 1]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_example: list[dict[str, Any]] = field(default_factory=list)

    @property
    def correct(self) -> list[bool]:
        """Per-example correctness (task accuracy, preference accuracy), in dataset order."""
        return [bool(row["correct"]) for row in self.per_example]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (95 % by default); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# --- tokenization shared by the metrics --------------------------------------------------------


def _ids(tokenizer: Any, messages: list[dict], **kwargs: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _completion_example(tokenizer: Any, prompt: list[dict], completion: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels -100 outside the completion, as TRL's DPO/KTO tokenize."""
    prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
    full_ids = _ids(tokenizer, prompt + completion)
    start = _common_prefix(prompt_ids, full_ids)
    labels = [-100] * start + full_ids[start:]
    return full_ids[:max_length], labels[:max_length]


def _assistant_example(tokenizer: Any, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels on the generation-marked assistant tokens only."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(encoded["input_ids"])
    mask = list(encoded["assistant_masks"])
    if not any(mask):
        raise ValueError(
            "held-out loss needs a chat template with {% generation %} markers around the assistant replies "
            "(see inference/chat_template.py); this tokenizer's template marks no assistant tokens"
        )
    labels = [tok if m else -100 for tok, m in zip(ids, mask)]
    return ids[:max_length], labels[:max_length]


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _token_logprobs(model: Any, examples: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(sum of label-token log-probs, label-token count) per example, in input order."""
    import torch

    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))  # less padding
    results: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    device = next(model.parameters()).device
    with torch.no_grad():
        for chunk in _batches(order, batch_size):
            width = max(len(examples[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq, lab = examples[i]
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, : len(lab)] = torch.tensor(lab)
                attention[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits.float()
            shifted = labels[:, 1:].to(device)
            logps = torch.log_softmax(logits[:, :-1], dim=-1)
            picked = logps.gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            valid = shifted != -100
            sums = (picked * valid).sum(dim=1)
            counts = valid.sum(dim=1)
            for row, i in enumerate(chunk):
                results[i] = (float(sums[row]), int(counts[row]))
    return results


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _was_training(model: Any) -> bool:
    training = model.training
    model.eval()
    return training


# --- metrics -------------------------------------------------------------------------------------


def heldout_loss(model: Any, tokenizer: Any, dataset: Iterable[dict], settings: EvalSettings | None = None) -> EvalResult:
    """Mean negative log-likelihood per assistant token on {"messages": [...]} rows."""
    settings = settings or EvalSettings()
    rows = list(dataset)
    examples = [_assistant_example(tokenizer, row["messages"], settings.max_length) for row in rows]
    training = _was_training(model)
    scored = _token_logprobs(model, examples, _pad_id(tokenizer), settings.batch_size)
    model.train(training)
    total_logp = sum(s for s, _ in scored)
    tokens = sum(n for _, n in scored)
    loss = -total_logp / tokens if tokens else float("nan")
    per_example = [{"loss": (-s / n) if n else float("nan"), "tokens": n} for s, n in scored]
    metrics = {
        "loss": loss,
        "perplexity": math.exp(loss) if tokens and loss < 50 else float("inf"),
        "tokens": float(tokens),
        "examples": float(len(rows)),
    }
    return EvalResult(metrics=metrics, per_example=per_example)


def _completion_logps(model: Any, tokenizer: Any, pairs: list[tuple[list[dict], list[dict]]], settings: EvalSettings) -> list[float]:
    examples = [_completion_example(tokenizer, prompt, completion, settings.max_length) for prompt, completion in pairs]
    return [s for s, _ in _token_logprobs(model, examples, _pad_id(tokenizer), settings.batch_size)]


def _policy_and_reference_logps(
    model: Any, tokenizer: Any, pairs: list[tuple[list[dict], list[dict]]], settings: EvalSettings, reference: Any
) -> tuple[list[float], list[float] | None, str]:
    from training.lora import is_peft_model, keep_adapter_state

    training = _was_training(model)
    policy = _completion_logps(model, tokenizer, pairs, settings)
    if reference is not None:
        ref_training = _was_training(reference)
        ref = _completion_logps(reference, tokenizer, pairs, settings)
        reference.train(ref_training)
        kind = "model"
    elif is_peft_model(model):
        # the checkpoint the adapter was trained from; keep_adapter_state because leaving
        # disable_adapter() re-enables grads on every LoRA weight, frozen ones included
        with keep_adapter_state(model), model.disable_adapter():
            ref = _completion_logps(model, tokenizer, pairs, settings)
        kind = "adapter-disabled"
    else:
        ref, kind = policy, "self"  # a plain model is its own reference: every implicit reward is 0
    model.train(training)
    return policy, ref, kind


def preference_accuracy(
    model: Any,
    tokenizer: Any,
    dataset: Iterable[dict],
    *,
    beta: float = 0.1,
    reference: Any = None,
    settings: EvalSettings | None = None,
) -> EvalResult:
    """DPO's implicit reward r = beta * (log pi(y|x) - log ref(y|x)) on chosen and rejected replies.

    accuracy: share of pairs with r(chosen) > r(rejected); margin: mean r(chosen) - r(rejected).
    The reference is `reference` when given, else the adapter-disabled model for a PeftModel, else
    the model itself (all rewards 0: nothing was trained yet). logp_accuracy / logp_margin are the
    reference-free view: log pi(chosen) against log pi(rejected)."""
    settings = settings or EvalSettings()
    rows = list(dataset)
    pairs = [(row["prompt"], row["chosen"]) for row in rows] + [(row["prompt"], row["rejected"]) for row in rows]
    policy, ref, kind = _policy_and_reference_logps(model, tokenizer, pairs, settings, reference)
    n = len(rows)
    per_example = []
    for i in range(n):
        chosen = beta * (policy[i] - ref[i])
        rejected = beta * (policy[n + i] - ref[n + i])
        per_example.append({"reward_chosen": chosen, "reward_rejected": rejected, "margin": chosen - rejected,
                            "correct": chosen > rejected})
    margins = [row["margin"] for row in per_example]
    # Reference-free view (meaningful before any training too): does the policy itself give the
    # chosen reply a higher log-probability than the rejected one?
    logp_margins = [policy[i] - policy[n + i] for i in range(n)]
    metrics = {
        "logp_accuracy": fmean(m > 0 for m in logp_margins) if n else float("nan"),
        "logp_margin": fmean(logp_margins) if n else float("nan"),
        "preference_accuracy": fmean(row["correct"] for row in per_example) if n else float("nan"),
        "reward_margin": fmean(margins) if n else float("nan"),
        "reward_chosen": fmean(row["reward_chosen"] for row in per_example) if n else float("nan"),
        "reward_rejected": fmean(row["reward_rejected"] for row in per_example) if n else float("nan"),
        "examples": float(n),
    }
    return EvalResult(metrics=metrics, per_example=per_example)


def label_reward_gap(
    model: Any,
    tokenizer: Any,
    dataset: Iterable[dict],
    *,
    beta: float = 0.1,
    reference: Any = None,
    settings: EvalSettings | None = None,
) -> EvalResult:
    """For KTO rows: mean implicit reward of desirable replies minus that of undesirable ones.
    `correct` per row: the reward has the label's sign (positive for desirable)."""
    settings = settings or EvalSettings()
    rows = list(dataset)
    pairs = [(row["prompt"], row["completion"]) for row in rows]
    policy, ref, kind = _policy_and_reference_logps(model, tokenizer, pairs, settings, reference)
    per_example = []
    for row, p, r in zip(rows, policy, ref):
        reward = beta * (p - r)
        per_example.append({"reward": reward, "label": bool(row["label"]), "correct": (reward > 0) == bool(row["label"])})
    good = [e["reward"] for e in per_example if e["label"]]
    bad = [e["reward"] for e in per_example if not e["label"]]
    metrics = {
        "reward_desirable": fmean(good) if good else float("nan"),
        "reward_undesirable": fmean(bad) if bad else float("nan"),
        "reward_gap": (fmean(good) - fmean(bad)) if good and bad else float("nan"),
        "label_accuracy": fmean(e["correct"] for e in per_example) if per_example else float("nan"),
        "examples": float(len(rows)),
    }
    return EvalResult(metrics=metrics, per_example=per_example)


def generate_replies(model: Any, tokenizer: Any, conversations: list[list[dict]], settings: EvalSettings) -> list[str]:
    """Greedy replies, batched with left padding."""
    import torch

    pad_id = _pad_id(tokenizer)
    device = next(model.parameters()).device
    prompts = [_ids(tokenizer, messages, add_generation_prompt=True)[-settings.max_length:] for messages in conversations]
    replies: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    training = _was_training(model)
    with torch.no_grad():
        for chunk in _batches(order, settings.batch_size):
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                attention[row, width - len(prompts[i]):] = 1
            output = model.generate(
                input_ids=ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row, i in enumerate(chunk):
                replies[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    model.train(training)
    return replies


def task_accuracy(
    model: Any, tokenizer: Any, tasks: Iterable[dict], judge: Judge | None = None, settings: EvalSettings | None = None
) -> EvalResult:
    """Generate a reply to each task's conversation ("messages", or "prompt") and score it with
    `judge(reply, row)`, by default the verifier each row names (traces.judges.score: row["judge"]
    with row["answer"], as traces.tasks builds them); a score at or above settings.pass_threshold
    counts as correct."""
    if judge is None:
        from traces.judges import score

        judge = score
    settings = settings or EvalSettings()
    rows = list(tasks)
    conversations = []
    for row in rows:
        conversation = row.get("messages") or row["prompt"]
        conversations.append([{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation)
    replies = generate_replies(model, tokenizer, conversations, settings)
    per_example = []
    for row, reply in zip(rows, replies):
        score = float(judge(reply, row))
        per_example.append({"reply": reply, "score": score, "correct": score >= settings.pass_threshold})
    n = len(per_example)
    metrics = {
        "task_accuracy": fmean(e["correct"] for e in per_example) if n else float("nan"),
        "mean_score": fmean(e["score"] for e in per_example) if n else float("nan"),
        "examples": float(n),
    }
    return EvalResult(metrics=metrics, per_example=per_example)


def check_eval_rows(tokenizer: Any, dataset: Any, kind: str, settings: EvalSettings | None = None) -> None:
    """Tokenize the first row as `evaluate_dataset` will, so a tokenizer that cannot score this kind
    of data (no chat template, no {% generation %} markers for held-out loss) fails with a one-line
    ValueError before any model work."""
    settings = settings or EvalSettings()
    row = dataset[0]
    if kind == "sft":
        _assistant_example(tokenizer, row["messages"], settings.max_length)
    elif kind in ("dpo", "kto"):
        _completion_example(tokenizer, row["prompt"], row["chosen" if kind == "dpo" else "completion"], settings.max_length)
    else:
        raise ValueError(f"unknown dataset kind {kind!r}")


def evaluate_dataset(model: Any, tokenizer: Any, dataset: Any, kind: str, *, settings: Any) -> EvalResult:
    """The metric that fits a dataset kind: sft -> held-out loss, dpo -> preference accuracy,
    kto -> label reward gap. `settings` is the whole TrainingSettings (beta comes from [dpo]/[kto])."""
    if kind == "sft":
        return heldout_loss(model, tokenizer, dataset, settings.eval)
    if kind == "dpo":
        return preference_accuracy(model, tokenizer, dataset, beta=settings.dpo.beta, settings=settings.eval)
    if kind == "kto":
        return label_reward_gap(model, tokenizer, dataset, beta=settings.kto.beta, settings=settings.eval)
    raise ValueError(f"unknown dataset kind {kind!r}")
