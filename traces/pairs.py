"""Preference data from feedback and from judges.

    choice      (user picked choice k of n)          -> DPO pairs: k chosen over each other choice
    correction  (user rewrote choice i)              -> DPO pair: the correction chosen over choice i
    thumbs      (user voted +1 / -1 on choice i)     -> KTO row: (prompt, choice i, desirable?)
    judges      (a function scores each of n > 1)    -> DPO pairs: the best chosen over each choice
                                                        scoring lower by more than `margin`

Ids are deterministic, and each kind of row has a "slot" per trace (see `slot_of`), so a user's
latest vote, choice or correction replaces the earlier one instead of contradicting it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable, Mapping

from traces.schemas import Feedback, KTORow, Message, PreferencePair, Trace

if TYPE_CHECKING:
    from traces.judges import Judge
    from traces.store import TraceStore


def derived_id(*parts: object) -> str:
    return "pref-" + hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=10).hexdigest()


def _assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def pairs_from_feedback(trace: Trace, feedback: Feedback) -> tuple[list[PreferencePair], list[KTORow]]:
    """DPO pairs and KTO rows implied by one piece of feedback on `trace`."""
    common: dict[str, Any] = dict(trace_ids=[trace.id], feedback_id=feedback.id,
                                  model_version=trace.model.version, consent=trace.consent,
                                  created_at=feedback.created_at, prompt=trace.messages)
    replies = [c.text for c in trace.choices]
    pairs: list[PreferencePair] = []
    kto: list[KTORow] = []
    if feedback.choice is not None:
        chosen = replies[feedback.choice]
        for j, other in enumerate(replies):
            if j != feedback.choice and other.strip() != chosen.strip():
                pairs.append(PreferencePair(
                    id=derived_id(trace.id, "choice", j), source="choice", chosen=_assistant(chosen),
                    rejected=_assistant(other), chosen_index=feedback.choice, rejected_index=j, **common))
    if feedback.correction is not None:
        original = replies[feedback.choice_index]
        if feedback.correction.strip() and feedback.correction.strip() != original.strip():
            pairs.append(PreferencePair(
                id=derived_id(trace.id, "correction", feedback.choice_index), source="correction",
                chosen=_assistant(feedback.correction), rejected=_assistant(original),
                chosen_index=None, rejected_index=feedback.choice_index, **common))
    if feedback.thumbs is not None:
        kto.append(KTORow(
            id=derived_id(trace.id, "thumbs", feedback.choice_index), source="thumbs",
            completion=_assistant(replies[feedback.choice_index]), choice_index=feedback.choice_index,
            label=feedback.thumbs > 0, **common))
    return pairs, kto


def slot_of(item: PreferencePair | KTORow) -> str:
    """Rows sharing a slot on one trace replace each other (the newest feedback or judging wins)."""
    if isinstance(item, PreferencePair):
        if item.source == "correction":
            return f"correction:{item.rejected_index}"
        return item.source                          # "choice", or "judge:<name>" (all pairs of a run)
    return f"{item.source}:{item.choice_index}"     # "thumbs:<i>", "judge:<name>:<i>"


def pairs_from_scores(trace: Trace, scores: list[float], judge_name: str,
                      margin: float = 0.0) -> list[PreferencePair]:
    """The best-scoring choice chosen over every choice scoring more than `margin` lower."""
    if len(scores) != len(trace.choices) or len(scores) < 2:
        return []
    best = max(range(len(scores)), key=lambda i: scores[i])
    chosen = trace.choices[best].text
    pairs = []
    for j, choice in enumerate(trace.choices):
        if scores[best] - scores[j] > margin and choice.text.strip() != chosen.strip():
            pairs.append(PreferencePair(
                id=derived_id(trace.id, f"judge:{judge_name}", j), source=f"judge:{judge_name}",
                trace_ids=[trace.id], model_version=trace.model.version, consent=trace.consent,
                prompt=trace.messages, chosen=_assistant(chosen), rejected=_assistant(choice.text),
                chosen_index=best, rejected_index=j, score_chosen=scores[best], score_rejected=scores[j]))
    return pairs


def kto_from_scores(trace: Trace, scores: list[float], judge_name: str, threshold: float = 0.5) -> list[KTORow]:
    """One KTO row per choice: desirable when its score reaches `threshold`."""
    return [
        KTORow(id=derived_id(trace.id, f"judge:{judge_name}", "kto", i), source=f"judge:{judge_name}",
               trace_ids=[trace.id], model_version=trace.model.version, consent=trace.consent,
               prompt=trace.messages, completion=_assistant(choice.text), choice_index=i,
               label=score >= threshold, score=score)
        for i, (choice, score) in enumerate(zip(trace.choices, scores))
    ]


def trace_task_row(trace: Trace) -> dict[str, Any]:
    """What a judge sees about the task behind a trace: the prompt plus the request's metadata
    (where a client that sent a checkable task put e.g. {"judge": "numeric", "answer": "42"})."""
    user_turns = [m.content for m in trace.messages if m.role == "user"]
    return {"messages": trace.prompt, "prompt": user_turns[-1] if user_turns else "", **trace.metadata}


def judge_store(store: "TraceStore", judge: "Judge | None" = None, *, name: str | None = None,
                row_for: Callable[[Trace], Mapping[str, Any]] = trace_task_row, margin: float = 0.0,
                with_kto: bool = False, kto_threshold: float = 0.5, **filters: Any) -> dict[str, int]:
    """Score every choice of every trace with n > 1 choices and store the pairs that follow.

    With `judge=None` each trace's own row picks its verifier (`row["judge"]`, see
    traces.judges.judge_for); traces without one are skipped. Returns counts."""
    from traces.judges import judge_for

    counts = {"traces": 0, "judged": 0, "pairs": 0, "kto": 0}
    for record in store.iter_records(min_choices=2, **filters):
        counts["traces"] += 1
        trace = record.to_trace()
        row = row_for(trace)
        chosen_judge = judge or judge_for(row)
        if chosen_judge is None:
            continue
        judge_name = name or getattr(chosen_judge, "__name__", "judge").removesuffix("_judge")
        scores = [float(chosen_judge(choice.text, row)) for choice in trace.choices]
        pairs = pairs_from_scores(trace, scores, judge_name, margin)
        kto = kto_from_scores(trace, scores, judge_name, kto_threshold) if with_kto else []
        store.add_derived(trace.id, pairs, kto)
        counts["judged"] += 1
        counts["pairs"] += len(pairs)
        counts["kto"] += len(kto)
    return counts
