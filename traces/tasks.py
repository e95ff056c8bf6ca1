"""Tasks with checkable answers: arithmetic, unit conversions, facts, multiple choice.

The loop needs prompts whose replies a verifier can score, both to turn n > 1 samples into
preference pairs and to evaluate checkpoints on held-out tasks:

    rows = generate_tasks(200, seed=0, split="train")
    held_out = generate_tasks(50, seed=0, split="eval")     # never overlaps any "train" task

Each row: {"id", "kind", "judge", "prompt", "messages", "answer"} (+ "options" for multiple
choice). Deterministic for a given (n, seed, kinds, split). A task belongs to "eval" when a hash of
its content falls in the eval share, so the two splits stay disjoint whatever the seed.
`task_metadata(row)` is what a client puts in a request's `metadata` so that a node's stored trace
carries its answer for the judges (traces.pairs.judge_store).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Sequence

KINDS = ("arithmetic", "unit_conversion", "fact", "multiple_choice")

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa",
    "Australia": "Canberra", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Mexico": "Mexico City",
    "India": "New Delhi", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna",
    "Ireland": "Dublin", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago", "Turkey": "Ankara",
    "Netherlands": "Amsterdam", "Belgium": "Brussels", "Hungary": "Budapest", "Thailand": "Bangkok",
    "South Korea": "Seoul", "Vietnam": "Hanoi", "Cuba": "Havana", "Colombia": "Bogota",
}
ELEMENTS = {
    "oxygen": "O", "hydrogen": "H", "carbon": "C", "nitrogen": "N", "gold": "Au", "silver": "Ag",
    "iron": "Fe", "sodium": "Na", "potassium": "K", "helium": "He", "copper": "Cu", "lead": "Pb",
    "calcium": "Ca", "zinc": "Zn", "neon": "Ne",
}
NUMERIC_FACTS = [
    ("How many legs does a spider have?", "8"), ("How many days are in a week?", "7"),
    ("How many continents are there?", "7"), ("How many sides does a hexagon have?", "6"),
    ("How many minutes are in an hour?", "60"), ("How many months are in a year?", "12"),
    ("How many planets are in the Solar System?", "8"), ("How many sides does a triangle have?", "3"),
    ("How many hours are in a day?", "24"), ("How many legs does an insect have?", "6"),
    ("At what temperature in degrees Celsius does water boil at sea level?", "100"),
    ("How many strings does a standard guitar have?", "6"), ("How many cents are in a dollar?", "100"),
]
# (from, to, factor): integer conversions a small model can learn
UNITS = [
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("feet", "inches", 12),
    ("weeks", "days", 7), ("liters", "milliliters", 1000), ("dozens", "items", 12), ("years", "months", 12),
]

EVAL_SHARE = 0.2
_SUFFIX = " Answer with just the number."


def _in_eval(key: str) -> bool:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < EVAL_SHARE


def _row(kind: str, key: str, judge: str, prompt: str, answer: str, split_key: str | None = None,
         **extra: Any) -> dict[str, Any]:
    """`split_key` names the underlying question (the same country in a fact and a multiple-choice
    task), so a question is in exactly one split."""
    task_id = f"{kind}-" + hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    return {"id": task_id, "kind": kind, "judge": judge, "prompt": prompt,
            "messages": [{"role": "user", "content": prompt}], "answer": answer,
            "_split_key": split_key or key, **extra}


def _arithmetic(rng: random.Random) -> dict[str, Any]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
    else:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    shown = {"+": "+", "-": "-", "*": "×"}[op]
    return _row("arithmetic", f"{a}{op}{b}", "numeric", f"What is {a} {shown} {b}?{_SUFFIX}", str(answer))


def _unit_conversion(rng: random.Random) -> dict[str, Any]:
    source, target, factor = rng.choice(UNITS)
    value = rng.randint(1, 20)
    return _row("unit_conversion", f"{value}{source}->{target}", "numeric",
                f"How many {target} are in {value} {source}?{_SUFFIX}", str(value * factor))


def _fact(rng: random.Random) -> dict[str, Any]:
    pick = rng.randrange(3)
    if pick == 0:
        country = rng.choice(sorted(CAPITALS))
        return _row("fact", f"capital:{country}", "contains",
                    f"What is the capital of {country}? Answer with one word or name.", CAPITALS[country])
    if pick == 1:
        element = rng.choice(sorted(ELEMENTS))
        return _row("fact", f"symbol:{element}", "exact",
                    f"What is the chemical symbol for {element}? Answer with the symbol only.", ELEMENTS[element])
    question, answer = rng.choice(NUMERIC_FACTS)
    return _row("fact", f"number:{question}", "numeric", question + _SUFFIX, answer)


def _multiple_choice(rng: random.Random) -> dict[str, Any]:
    country = rng.choice(sorted(CAPITALS))
    wrong = rng.sample(sorted(set(CAPITALS.values()) - {CAPITALS[country]}), 3)
    options = wrong + [CAPITALS[country]]
    rng.shuffle(options)
    letter = "ABCD"[options.index(CAPITALS[country])]
    listed = "\n".join(f"{'ABCD'[i]}) {option}" for i, option in enumerate(options))
    prompt = f"What is the capital of {country}?\n{listed}\nAnswer with the letter only."
    return _row("multiple_choice", f"mc:{country}:{'|'.join(options)}", "choice", prompt, letter,
                split_key=f"capital:{country}", options=options)


_MAKERS = {"arithmetic": _arithmetic, "unit_conversion": _unit_conversion, "fact": _fact,
           "multiple_choice": _multiple_choice}


def generate_tasks(n: int, seed: int = 0, kinds: Sequence[str] = KINDS, split: str = "train",
                   unique: bool = True) -> list[dict[str, Any]]:
    """`n` tasks of the given kinds (round-robin; a kind with no new task left for the split is
    dropped from the rotation), all from `split` ("train" or "eval")."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    unknown = set(kinds) - set(_MAKERS)
    if unknown:
        raise ValueError(f"unknown task kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    rng = random.Random(f"{seed}:{split}")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    active = list(kinds)                   # kinds that still yield new tasks, in rotation
    misses = {kind: 0 for kind in kinds}
    turn = 0
    while len(rows) < n:
        if not active:
            raise ValueError(f"only {len(rows)} distinct {split} tasks of kinds {list(kinds)} exist")
        kind = active[turn % len(active)]
        row = _MAKERS[kind](rng)
        split_key = row.pop("_split_key")
        if _in_eval(split_key) != (split == "eval") or (unique and row["id"] in seen):
            misses[kind] += 1
            if misses[kind] > 2000:        # this kind has no new tasks left for the split
                active.remove(kind)
            continue
        misses[kind] = 0
        seen.add(row["id"])
        rows.append(row)
        turn += 1
    return rows


def task_metadata(row: dict[str, Any]) -> dict[str, str]:
    """OpenAI request `metadata` (string values) carrying what a judge needs about the task."""
    meta = {"task_id": row["id"], "task_kind": row["kind"], "judge": row["judge"], "answer": str(row["answer"])}
    if "options" in row:
        meta["options"] = "|".join(row["options"])
    return meta
