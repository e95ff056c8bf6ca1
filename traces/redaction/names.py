"""Person names, found by a spaCy pipeline's named-entity recognizer when one is installed.

Names have no checksum, so they need a statistical model; spaCy is an optional extra
(`pip install swarmloop[names]` plus a pipeline such as en_core_web_sm). Without one, name redaction
is off and every trace says so (`redaction.names == "off"`).
"""

from __future__ import annotations

import importlib.metadata
import sys
from contextlib import contextmanager
from typing import Any, Iterator

PERSON_LABELS = frozenset({"PERSON", "PER"})


def installed_spacy_pipelines() -> list[str]:
    """Pipeline packages registered with spaCy, found without importing spaCy (which is slow)."""
    return sorted({ep.name for ep in importlib.metadata.entry_points(group="spacy_models")})


@contextmanager
def torch_hidden() -> Iterator[None]:
    """thinc (under spaCy) imports torch when it can, and plugins that spaCy loads through entry
    points may import transformers; the traces package stays torch-free and CPU name pipelines do
    not need torch, so torch and transformers are hidden while spaCy and a pipeline load. Hiding
    transformers too matters: imported while torch is hidden, it would remember "no torch" for the
    rest of the process (plugins treat its absence as optional). Only in a process that has not
    imported torch or transformers yet (a node server has both already: nothing is hidden)."""
    hidden = ("torch", "transformers")
    hide = not any(name in sys.modules for name in hidden)
    if hide:
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hide:
            for name in hidden:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]


def _import_spacy() -> Any:
    with torch_hidden():
        import spacy
    return spacy


def load_names_pipeline(setting: str) -> tuple[Any | None, str]:
    """(pipeline or None, a one-line status such as "on (en_core_web_sm)" or "off (...)")."""
    if setting == "off":
        return None, "off (disabled by configuration)"
    if setting == "auto":
        pipelines = installed_spacy_pipelines()
        if not pipelines:
            return None, "off (no spaCy pipeline installed; see the `names` extra)"
        english = [name for name in pipelines if name.startswith("en_")]
        setting = (english or pipelines)[0]
    try:
        spacy = _import_spacy()
    except ImportError:
        return None, "off (spaCy is not installed; see the `names` extra)"
    try:
        with torch_hidden():
            nlp = spacy.load(setting, exclude=["lemmatizer", "tagger", "parser", "attribute_ruler", "senter"])
    except (OSError, ValueError) as exc:
        raise ValueError(f"privacy.names: cannot load spaCy pipeline {setting!r}: {exc}") from None
    return nlp, f"on ({setting})"


def find_names(nlp: Any, texts: list[str]) -> list[list[tuple[int, int, str]]]:
    return [
        [(ent.start_char, ent.end_char, "PERSON") for ent in doc.ents if ent.label_ in PERSON_LABELS]
        for doc in nlp.pipe(texts)
    ]
