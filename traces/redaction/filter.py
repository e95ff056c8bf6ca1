"""The privacy filter: find PII and secrets, replace them with typed placeholders.

    pf = PrivacyFilter()
    pf.scan("mail me at a@b.org")                      -> [Span(11, 19, "EMAIL")]
    pf.redact("mail me at a@b.org").text               -> "mail me at <EMAIL_1>"
    pf.redact_conversations([[turn1, turn2, reply]])   -> one numbering per conversation, so the
                                                          same e-mail is <EMAIL_1> in every turn

Batches are scanned as one string (texts joined by NUL), one pass per detector; spans are reported
in each input's own character offsets.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from traces.config import PrivacySettings
from traces.redaction import detectors as d
from traces.redaction.names import find_names, load_names_pipeline
from traces.redaction.windows import fold_to_ascii, interesting_windows, prepare_unicode

# When two findings overlap, the more specific one wins (a URL's password@host is not an e-mail).
PRIORITY = {
    kind: rank for rank, kind in enumerate([
        "PRIVATE_KEY", "URL_CREDENTIALS", "API_KEY", "EMAIL", "IBAN", "CREDIT_CARD", "US_SSN",
        "NATIONAL_ID", "PHONE", "IP_ADDRESS", "SECRET", "PERSON",
    ])
}
SEPARATOR = "\x00"
FILTER_VERSION = "1"


class Span(NamedTuple):
    start: int
    end: int
    type: str


@dataclass
class Redacted:
    text: str
    spans: list[Span]                       # in the input's character offsets


@dataclass
class RedactedConversation:
    texts: list[str]
    counts: dict[str, int]                  # findings by type across the conversation


def _resolve_overlaps(found: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Keep the most specific of overlapping findings (by PRIORITY, then the longest), sorted by
    start. Only groups of findings that overlap need the greedy pass; most findings stand alone."""
    found.sort()
    kept: list[tuple[int, int, str]] = []
    group: list[tuple[int, int, str]] = []
    reach = -1
    for span in found:
        if span[0] >= reach:                  # overlaps nothing before it: a new group starts
            if len(group) == 1:
                kept.append(group[0])
            elif group:
                kept.extend(_resolve_group(group))
            group = []
        group.append(span)
        reach = max(reach, span[1])
    if len(group) == 1:
        kept.append(group[0])
    elif group:
        kept.extend(_resolve_group(group))
    return kept


def _resolve_group(found: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    found.sort(key=lambda s: (PRIORITY[s[2]], s[0] - s[1], s[0]))
    starts: list[int] = []
    kept: list[tuple[int, int, str]] = []
    for span in found:
        start, end, _ = span
        i = bisect.bisect_left(starts, start)
        if i > 0 and kept[i - 1][1] > start:
            continue
        if i < len(kept) and kept[i][0] < end:
            continue
        starts.insert(i, start)
        kept.insert(i, span)
    return kept


def _subtract(windows: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`windows` (sorted, disjoint) minus `spans` (sorted by start, may overlap)."""
    if not spans:
        return windows
    out: list[tuple[int, int]] = []
    i = 0
    for start, end in windows:
        while i < len(spans) and spans[i][1] <= start:
            i += 1
        j = i
        while j < len(spans) and spans[j][0] < end:
            cut_start, cut_end = spans[j]
            if cut_start > start:
                out.append((start, cut_start))
            start = max(start, cut_end)
            j += 1
        if start < end:
            out.append((start, end))
    return out


def _canonical(kind: str, value: str) -> str:
    """Two spellings of one value get one placeholder (case of e-mails, separators in numbers)."""
    if kind in ("EMAIL", "URL_CREDENTIALS"):
        return value.lower()
    if kind in ("PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "NATIONAL_ID"):
        return "".join(c for c in fold_to_ascii(value).upper() if c.isalnum())
    return value


class PrivacyFilter:
    def __init__(self, settings: PrivacySettings | dict | None = None) -> None:
        if settings is None:
            settings = PrivacySettings()
        elif isinstance(settings, dict):
            settings = PrivacySettings.model_validate(settings)
        self.settings = settings
        types = set(settings.types)
        self.types = types
        regions = tuple(settings.phone_regions)
        # Run over the whole text: each starts from a literal found with str.find.
        whole = [("PRIVATE_KEY", d.find_private_keys), ("URL_CREDENTIALS", d.find_url_credentials),
                 ("EMAIL", d.find_emails)]
        self._whole = [fn for kind, fn in whole if kind in types]
        # Run only inside windows.interesting_windows: near digit clusters, or near long tokens.
        near_digits = [("IP_ADDRESS", d.find_ipv4), ("IP_ADDRESS", d.find_ipv6)]
        self._near_digits = [fn for kind, fn in near_digits if kind in types]
        if types & {"IBAN", "NATIONAL_ID"}:
            self._near_digits.append(d.find_letter_ids)
        if types & {"PHONE", "CREDIT_CARD", "US_SSN", "NATIONAL_ID"}:
            self._near_digits.append(lambda text, out: d.find_numbers(text, out, regions))
            d.prepare_regions(regions)        # compile their metadata now, not in the first scan
        prepare_unicode()                     # the non-ASCII digit tables (about 20 ms, once per process)
        self._keys = "API_KEY" in types
        self._secrets = "SECRET" in types
        if "PERSON" in types:
            self._nlp, self.names_status = load_names_pipeline(settings.names)
        else:
            self._nlp, self.names_status = None, "off (PERSON is not in privacy.types)"

    @property
    def names_on(self) -> bool:
        return self._nlp is not None

    # ------------------------------------------------------------------ finding

    def scan_many(self, texts: Sequence[str]) -> list[Sequence[Span]]:
        """Spans for each text, each in that text's own offsets, overlaps resolved."""
        if not texts:
            return []
        joined = SEPARATOR.join(texts)
        found: list[tuple[int, int, str]] = []
        for detect in self._whole:
            detect(joined, found)
        digit_windows, token_windows = interesting_windows(joined, min(20, self.settings.secret_min_length))
        # Text that a whole-text finding already claims outranks what a window detector could
        # find in it (the overlap resolution would drop that), so the windows skip it: PEM bodies,
        # URLs with a password and e-mails for the number detectors; PEM bodies and URLs only for
        # keys and secrets (an API key outranks an e-mail).
        if found:
            claimed = sorted((s, e) for s, e, _ in found)
            digit_windows = _subtract(digit_windows, claimed)
            token_windows = _subtract(token_windows, [(s, e) for s, e, kind in sorted(found)
                                                      if PRIORITY[kind] < PRIORITY["API_KEY"]])
        if self._near_digits:
            found.extend(self._scan_windows(joined, digit_windows, self._near_digits))
        if self._keys or self._secrets:
            found.extend(self._scan_windows(joined, token_windows, [d.find_api_keys] if self._keys else [],
                                            secrets=self._secrets))
        if self._nlp is not None:
            offset = 0
            for text, names in zip(texts, find_names(self._nlp, list(texts))):
                found.extend((offset + s, offset + e, kind) for s, e, kind in names)
                offset += len(text) + 1
        found = [span for span in found if span[2] in self.types]
        # Most texts have no findings: they share one empty tuple (no per-text allocation).
        result: list = [()] * len(texts)
        if not found:
            return result
        starts, offset = [], 0
        for text in texts:
            starts.append(offset)
            offset += len(text) + 1
        for start, end, kind in _resolve_overlaps(found):
            index = bisect.bisect_right(starts, start) - 1
            base = starts[index]
            if not result[index]:
                result[index] = []
            result[index].append(Span(start - base, end - base, kind))
        return result

    def _scan_windows(self, joined: str, windows: list[tuple[int, int]], detectors: list,
                      secrets: bool = False) -> list[tuple[int, int, str]]:
        """Run `detectors` over the windows of `joined` (joined into one string), then, with
        `secrets`, the entropy test on long tokens that none of their findings covers. (A token
        inside an earlier finding of another pass may come out as a SECRET too: the overlap
        resolution drops it, as SECRET ranks below every other type.)"""
        if not windows:
            return []
        pieces = [joined[start:end] for start, end in windows]
        if not joined.isascii():      # "４１１１ ..." is read as "4111 ...", at the same offsets
            pieces = [fold_to_ascii(piece) for piece in pieces]
        sub = SEPARATOR.join(pieces)
        sub_starts, cursor = [], 0
        for piece in pieces:
            sub_starts.append(cursor)
            cursor += len(piece) + 1
        found: list[tuple[int, int, str]] = []
        for detect in detectors:
            detect(sub, found)
        if secrets:
            covered = sorted((s, e) for s, e, _ in found)     # keys need no entropy test
            d.find_secrets(sub, found, self.settings.secret_min_length, self.settings.secret_entropy_ratio, covered)
        mapped = []
        for start, end, kind in found:
            i = bisect.bisect_right(sub_starts, start) - 1
            shift = windows[i][0] - sub_starts[i]
            mapped.append((start + shift, end + shift, kind))
        return mapped

    def scan(self, text: str) -> list[Span]:
        return list(self.scan_many([text])[0])

    # ------------------------------------------------------------------ replacing

    @staticmethod
    def _apply(text: str, spans: list[Span], numbering: dict[tuple[str, str], str],
               counts: Counter) -> str:
        if not spans:
            return text
        pieces, cursor = [], 0
        for start, end, kind in spans:
            key = (kind, _canonical(kind, text[start:end]))
            placeholder = numbering.get(key)
            if placeholder is None:
                counts[kind] += 1
                placeholder = f"<{kind}_{counts[kind]}>"
                numbering[key] = placeholder
            pieces.append(text[cursor:start])
            pieces.append(placeholder)
            cursor = end
        pieces.append(text[cursor:])
        return "".join(pieces)

    def apply_placeholders(self, text: str, spans: Sequence[Span],
                           numbering: dict[tuple[str, str], str] | None = None) -> str:
        """Replace `spans` of `text`; pass the same `numbering` dict to share numbers across texts."""
        return self._apply(text, list(spans), {} if numbering is None else numbering, Counter())

    def redact(self, text: str) -> Redacted:
        spans = self.scan(text)
        return Redacted(self._apply(text, spans, {}, Counter()), spans)

    def redact_many(self, texts: Sequence[str]) -> list[Redacted]:
        """Each text on its own numbering (the CLI's line-by-line mode)."""
        return [Redacted(self._apply(text, spans, {}, Counter()), spans)
                for text, spans in zip(texts, self.scan_many(texts))]

    def redact_conversations(self, conversations: Sequence[Sequence[str]]) -> list[RedactedConversation]:
        """Redact many conversations in one scan; placeholders are numbered per conversation.

        `counts` holds distinct values by type (an e-mail repeated in three turns counts once)."""
        flat = [text for conversation in conversations for text in conversation]
        spans = self.scan_many(flat)
        out, i = [], 0
        for conversation in conversations:
            size = len(conversation)
            if not any(spans[i:i + size]):                # the common case: nothing found
                out.append(RedactedConversation(list(conversation), {}))
                i += size
                continue
            numbering: dict[tuple[str, str], str] = {}
            counts: Counter = Counter()
            texts = []
            for text in conversation:
                texts.append(self._apply(text, spans[i], numbering, counts))
                i += 1
            out.append(RedactedConversation(texts, dict(counts)))
        return out
