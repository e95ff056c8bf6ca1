"""Where to look: the few stretches of a text that could hold a structured identifier.

Regex passes cost 10-30 ns per character in CPython; one bytes.translate plus a few vectorised numpy
passes cost a few. Every number-shaped identifier (phone, card, SSN, IBAN, national ID, IP address)
has a cluster of digits, and every key or secret is a long run of token characters, so the regex
detectors only need to see the neighbourhood of digit clusters (numbers, IBANs, IDs, IPs) or of
long tokens (keys, secrets). Conversation text has few of either: the regexes read about 1 % of it.

Non-ASCII digits: every Unicode decimal digit (full-width "４１１１", Arabic-Indic, Devanagari...)
counts as a digit here, and full-width Latin letters and "+/_-" as token characters, so numbers
written with them get a window too; `fold_to_ascii` then turns each such character into its ASCII
twin (one character for one, so offsets carry over) before the detectors read a window. Other
non-ASCII characters separate tokens. Whole-text detectors (e-mails, URLs, PEM keys) are not
folded: a full-width "＠" does not make an e-mail address.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np

DIGIT_GAP = 8               # digits closer than this are one cluster ("GB26 TLUE 2736", "+44 (0) 115")
MIN_DIGITS = 4              # fewest digits of any numeric identifier (an IPv4 address "1.2.3.4")
DIGIT_MARGIN = 32           # context kept before a cluster (ID keywords, leading letters of IBANs and IDs)
DIGIT_TAIL = 24             # and after it (check letters, "x" extensions, IPv6 groups of letters)
LONG_TOKEN = 20             # a run this long of [A-Za-z0-9+/_-] may be a key or a secret
TOKEN_MARGIN = 12           # around long tokens (key prefixes such as "SG." or "sk-")
_FULL_BLOCK = 0x01010101    # four bytes of True seen as one uint32

_DIGIT, _TOKEN, _OTHER = 3, 2, 0
_CLASSES = bytes(
    _DIGIT if 48 <= i <= 57 else
    _TOKEN if (65 <= i <= 90 or 97 <= i <= 122 or i in b"+/_-") else _OTHER
    for i in range(256)
)


_TABLE_SIZE = 0x20000        # every Unicode decimal digit lies in planes 0 and 1
_FULLWIDTH = range(0xFF01, 0xFF5F)     # full-width forms of ASCII "!" .. "~"


@lru_cache(maxsize=1)
def _unicode_tables() -> tuple[np.ndarray, dict[int, str]]:
    """Built on the first non-ASCII text (about 20 ms): the class of every code point below
    _TABLE_SIZE (the last entry stands for every code point above), and the ASCII folding."""
    table = np.zeros(_TABLE_SIZE, dtype=np.uint8)
    table[:256] = np.frombuffer(_CLASSES, dtype=np.uint8)
    fold: dict[int, str] = {}
    for code in range(128, _TABLE_SIZE):
        char = chr(code)
        if char.isdecimal():
            table[code] = _DIGIT
            fold[code] = str(unicodedata.decimal(char))
    for code in _FULLWIDTH:
        twin = code - 0xFEE0
        table[code] = _CLASSES[twin]
        fold[code] = chr(twin)
    fold[0x3000] = " "                   # the ideographic (full-width) space
    table[_TABLE_SIZE - 1] = _OTHER
    return table, fold


def prepare_unicode() -> None:
    """Build the tables now (the filter does it once at start) rather than on the first non-ASCII text."""
    _unicode_tables()


def fold_to_ascii(text: str) -> str:
    """Non-ASCII decimal digits and full-width ASCII forms as ASCII; the same length."""
    return text if text.isascii() else text.translate(_unicode_tables()[1])


def _class_bytes(text: str) -> bytes:
    """One class byte per character of `text`."""
    if text.isascii():
        return text.encode("ascii").translate(_CLASSES)
    table = _unicode_tables()[0]
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return table[np.minimum(codes, _TABLE_SIZE - 1)].tobytes()


def _snap_and_merge(spans: list[tuple[int, int]], class_bytes: bytes, size: int) -> list[tuple[int, int]]:
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        # Snap outwards to token boundaries, so no detector sees half a word at a window's edge.
        start = class_bytes.rfind(b"\x00", 0, max(0, start)) + 1
        end = class_bytes.find(b"\x00", min(size, end))
        end = size if end < 0 else end
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def interesting_windows(text: str, long_token: int = LONG_TOKEN) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(digit windows, long-token windows): sorted, non-overlapping (start, end) ranges of `text`
    around digit clusters and around runs of at least `long_token` token characters."""
    size = len(text)
    if size == 0:
        return [], []
    class_bytes = _class_bytes(text)               # one byte per character: offsets carry over
    classes = np.frombuffer(class_bytes, dtype=np.uint8)

    digit_spans: list[tuple[int, int]] = []
    digits = np.flatnonzero(classes == _DIGIT)
    if digits.size >= MIN_DIGITS:
        cuts = np.flatnonzero(np.diff(digits) > DIGIT_GAP)
        first = np.concatenate(([0], cuts + 1))
        last = np.concatenate((cuts, [digits.size - 1]))
        keep = (last - first + 1) >= MIN_DIGITS
        digit_spans = list(zip((digits[first[keep]] - DIGIT_MARGIN).tolist(),
                               (digits[last[keep]] + 1 + DIGIT_TAIL).tolist()))

    # A run of >= long_token token characters covers four whole aligned blocks of size
    # (long_token + 1) // 5: view the token mask in blocks (one compare per block for blocks of
    # 4 bytes, seen as uint32), AND four neighbours, then find each run's ends with bytes.find.
    token_spans: list[tuple[int, int]] = []
    block = max(1, (long_token + 1) // 5)
    blocks = size // block
    if blocks >= 4:
        token = classes[: blocks * block] != _OTHER
        if block == 4:
            full = token.view(np.uint32) == _FULL_BLOCK
        else:
            full = token.reshape(blocks, block).all(axis=1)
        run = full[: blocks - 3] & full[1: blocks - 2] & full[2: blocks - 1] & full[3:]
        # Consecutive hits belong to one token (a character that is not a token character breaks
        # every block it is in): visit only the first hit of each.
        firsts = run.copy()
        firsts[1:] &= ~run[:-1]
        for index in np.flatnonzero(firsts).tolist():
            at = index * block
            run_start = class_bytes.rfind(b"\x00", 0, at) + 1
            run_end = class_bytes.find(b"\x00", at)
            run_end = size if run_end < 0 else run_end
            if run_end - run_start >= long_token:
                token_spans.append((run_start - TOKEN_MARGIN, run_end + TOKEN_MARGIN))
    return _snap_and_merge(digit_spans, class_bytes, size), _snap_and_merge(token_spans, class_bytes, size)
