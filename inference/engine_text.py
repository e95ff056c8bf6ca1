"""Text side of generation: incremental detokenization and stop strings.

Byte-level BPE splits a multi-byte character (é, 日, 🎉) over several tokens; decoding a token
alone yields U+FFFD. IncrementalDetokenizer decodes a small window of recent tokens and only
releases text once it no longer ends in an incomplete character (the offsets trick used by
text-generation-inference and vLLM), so the streamed deltas concatenate to the full decode.
"""

from __future__ import annotations

from typing import Any, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._tokens: list[int] = []
        self._prefix_offset = 0  # start of the window that gives context to the next decode
        self._read_offset = 0    # tokens before this are already turned into text

    def _decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly empty)."""
        self._tokens.append(token_id)
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._tokens)
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back at the end of generation (e.g. a truly invalid byte sequence)."""
        prefix_text = self._decode(self._tokens[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._tokens[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._tokens)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


def find_stop(text: str, stops: Sequence[str], search_from: int = 0) -> int:
    """Index of the earliest stop string in text[search_from:], or -1."""
    best = -1
    for stop in stops:
        at = text.find(stop, search_from)
        if at != -1 and (best == -1 or at < best):
            best = at
    return best


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string and must not be sent yet."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
