"""Where to look: the few stretches of a text that could hold a structured identifier.

Regex passes cost 10-30 ns per character in CPython; one bytes.translate plus a few vectorised numpy
passes cost a few. Every number-shaped identifier (phone, card, SSN, IBAN, national ID, IP address)
has a cluster of digits, and every key or secret is a long run of token characters, so the regex
detectors only need to see the neighbourhood of digit clusters (numbers, IBANs, IDs, IPs) or of
long tokens (keys, secrets). Conversation text has few of either: the regexes read about 1 % of it.
"""

from __future__ import annotations

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
    raw = text.encode("ascii", "replace")          # one byte per character: offsets carry over
    size = len(raw)
    if size == 0:
        return [], []
    class_bytes = raw.translate(_CLASSES)
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
        cursor = -1
        for index in np.flatnonzero(run).tolist():
            at = index * block
            if at < cursor:
                continue                      # inside the run found last time
            run_start = class_bytes.rfind(b"\x00", 0, at) + 1
            run_end = class_bytes.find(b"\x00", at)
            run_end = size if run_end < 0 else run_end
            cursor = run_end
            if run_end - run_start >= long_token:
                token_spans.append((run_start - TOKEN_MARGIN, run_end + TOKEN_MARGIN))
    return _snap_and_merge(digit_spans, class_bytes, size), _snap_and_merge(token_spans, class_bytes, size)
