"""Judges: functions that score a reply to a task, for preference pairs and for evaluation.

    Judge = Callable[[str, Mapping[str, Any]], float]      # (reply, task row) -> score, higher is better

A task row is a dict such as those of traces.tasks ({"prompt", "answer", "judge", ...}) or, for a
stored trace, traces.pairs.trace_task_row(trace). The verifier judges here score 1.0 or 0.0:

    numeric_judge   the last number in the reply equals row["answer"] (tolerance row["tolerance"])
    exact_judge     the reply equals row["answer"] (or one of row["answers"]) after normalization
    contains_judge  the answer appears in the reply as whole words
    choice_judge    the multiple-choice letter the reply commits to equals row["answer"]
    regex_judge     row["pattern"] matches the reply

`judge_for(row)` picks one by row["judge"]; `make_regex_judge(pattern)` builds a fixed-pattern judge.
Any other callable with the same signature plugs in (an LLM judge, a reward model).
"""

from __future__ import annotations

import math
import re
import string
from typing import Any, Callable, Mapping

Judge = Callable[[str, Mapping[str, Any]], float]

_NUMBER = re.compile(r"(?<![\w.])[-−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])|(?<![\w.])[-−]?\d+(?:\.\d+)?(?:/\d+)?")
_ANSWER_IS = re.compile(r"(?:answer|result|total)\s*(?:is|=|:)\s*", re.I)


def parse_number(text: str) -> float | None:
    text = text.strip().replace("−", "-").replace(",", "")
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(reply: str) -> float | None:
    """The number a reply commits to: the one after "answer is", else the last one in the reply."""
    marked = _ANSWER_IS.search(reply)
    if marked:
        after = _NUMBER.search(reply, marked.end())
        if after:
            return parse_number(after.group())
    numbers = _NUMBER.findall(reply)
    return parse_number(numbers[-1]) if numbers else None


def numeric_judge(reply: str, row: Mapping[str, Any]) -> float:
    expected = parse_number(str(row["answer"]))
    got = extract_number(reply)
    if expected is None or got is None:
        return 0.0
    tolerance = float(row.get("tolerance", 1e-6))
    return 1.0 if math.isclose(got, expected, rel_tol=tolerance, abs_tol=tolerance) else 0.0


_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (SQuAD-style)."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def _answers(row: Mapping[str, Any]) -> list[str]:
    answers = row.get("answers") or [row["answer"]]
    if isinstance(answers, str):
        answers = answers.split("|")
    return [normalize_answer(a) for a in answers if normalize_answer(a)]


def exact_judge(reply: str, row: Mapping[str, Any]) -> float:
    return 1.0 if normalize_answer(reply) in _answers(row) else 0.0


def contains_judge(reply: str, row: Mapping[str, Any]) -> float:
    padded = f" {normalize_answer(reply)} "
    return 1.0 if any(f" {answer} " in padded for answer in _answers(row)) else 0.0


_CHOICE_PATTERNS = [
    re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*\(?([A-E])\b", re.I),
    re.compile(r"^\s*\(?([A-E])[).:\s]", re.M),
    re.compile(r"^\s*\(?([A-E])\)?\s*$", re.M),
    re.compile(r"\(([A-E])\)"),
]


def extract_choice(reply: str, letters: str = "ABCDE") -> str | None:
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(reply)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    return None


def choice_judge(reply: str, row: Mapping[str, Any]) -> float:
    letter = extract_choice(reply)
    if letter is None and row.get("options"):
        # A reply that spells out exactly one option's text also commits to it.
        options = row["options"] if isinstance(row["options"], (list, tuple)) else str(row["options"]).split("|")
        hits = [chr(65 + i) for i, option in enumerate(options) if contains_judge(reply, {"answer": option})]
        letter = hits[0] if len(hits) == 1 else None
    return 1.0 if letter is not None and letter == str(row["answer"]).strip().upper() else 0.0


def regex_judge(reply: str, row: Mapping[str, Any]) -> float:
    return 1.0 if re.search(str(row["pattern"]), reply, re.I | re.S) else 0.0


def make_regex_judge(pattern: str, flags: int = re.I | re.S) -> Judge:
    compiled = re.compile(pattern, flags)

    def judge(reply: str, row: Mapping[str, Any]) -> float:
        return 1.0 if compiled.search(reply) else 0.0

    judge.__name__ = "regex_judge"
    return judge


JUDGES: dict[str, Judge] = {
    "numeric": numeric_judge,
    "exact": exact_judge,
    "contains": contains_judge,
    "choice": choice_judge,
    "regex": regex_judge,
}


def judge_for(row: Mapping[str, Any]) -> Judge | None:
    """The verifier a task row asks for (row["judge"]), or None."""
    return JUDGES.get(str(row.get("judge", "")))


def score(reply: str, row: Mapping[str, Any]) -> float:
    judge = judge_for(row)
    if judge is None:
        raise ValueError(f"task row has no known judge (judge={row.get('judge')!r}; known: {', '.join(JUDGES)})")
    return judge(reply, row)
