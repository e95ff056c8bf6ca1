"""Structured PII and secret detectors.

Each detector takes one string (usually many texts joined with NUL, so that a whole batch costs one
scan per detector) and appends (start, end, type) spans. Speed comes from cheap scans first: a
literal `str.find` for '@', '://' and every key prefix; a digit- or capital-led regex that the
regex engine skips to quickly; validation (checksums, libphonenumber) only for the few candidates
that survive. No match can cross a NUL, so spans never straddle two texts.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import re
import unicodedata
from collections import Counter
from functools import lru_cache

import phonenumbers

from traces.redaction import checksums as ck
from traces.redaction import phones

Span = tuple[int, int, str]

# ----------------------------------------------------------------- e-mail, URL with credentials

_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!#$%&'*+/=?^_`{|}~-")
_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")
_URL_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_URL_USERINFO = re.compile(r"[^\s/?#@\x00\"'<>]+@[^\s/?#@\x00\"'<>]+[^\s\x00\"'<>]*")


def _non_ascii_local(char: str) -> bool:
    """Internationalized addresses (RFC 6531) may use any non-ASCII letter, digit or combining
    mark in the local part: "jörg", "josé", "用户" are whole local parts. (Text in a script
    written without spaces may run into the address: it is redacted with it, never left out.)"""
    return char.isalnum() or unicodedata.category(char)[0] == "M"


def find_emails(text: str, out: list[Span]) -> None:
    at = text.find("@")
    while at != -1:
        start = at
        floor = max(0, at - 64)
        while start > floor:
            char = text[start - 1]
            if char in _EMAIL_LOCAL or (char > "\x7f" and _non_ascii_local(char)):
                start -= 1
            else:
                break
        while start < at and text[start] == ".":
            start += 1
        domain = _DOMAIN.match(text, at + 1)
        if start < at and domain:
            out.append((start, domain.end(), "EMAIL"))
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)


def find_url_credentials(text: str, out: list[Span]) -> None:
    """scheme://user:password@host/... (or a token as user). Found from the '@', which is rarer than '://'."""
    at = text.find("@")
    done = 0
    while at != -1:
        floor = max(done, at - 256)
        sep = text.rfind("://", floor, at)
        if sep != -1 and not any(c.isspace() or c == "\x00" for c in text[sep:at]):
            start = sep
            while start > floor and text[start - 1] in _URL_SCHEME_CHARS:
                start -= 1
            rest = _URL_USERINFO.match(text, sep + 3)
            if start < sep and rest:
                end = rest.end()
                while text[end - 1] in ".,;:!?)]}":     # sentence punctuation after a URL
                    end -= 1
                out.append((start, end, "URL_CREDENTIALS"))
                done = end
                at = text.find("@", end)
                continue
        at = text.find("@", at + 1)


# ----------------------------------------------------------------- keys and tokens of known formats

# A PEM private key: its BEGIN line, then the body up to the matching END line, or, when there
# is none, to the end of the text (a truncated key is still a key), at most _PEM_BODY characters.
_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----")
_PEM_BODY = 20000
# prefix found with str.find -> the full pattern matched at that spot
_KEY_FORMATS: list[tuple[str, re.Pattern[str]]] = [
    (prefix, re.compile(pattern))
    for prefix, pattern in [
        ("sk-", r"sk-(?:[A-Za-z0-9]+-){0,3}[A-Za-z0-9_\-]{20,}"),           # OpenAI, Anthropic, DeepSeek...
        ("sk_live_", r"sk_live_[A-Za-z0-9]{16,}"),                          # Stripe
        ("sk_test_", r"sk_test_[A-Za-z0-9]{16,}"),
        ("rk_live_", r"rk_live_[A-Za-z0-9]{16,}"),
        ("ghp_", r"ghp_[A-Za-z0-9]{30,}"),                                  # GitHub
        ("gho_", r"gho_[A-Za-z0-9]{30,}"),
        ("ghu_", r"ghu_[A-Za-z0-9]{30,}"),
        ("ghs_", r"ghs_[A-Za-z0-9]{30,}"),
        ("ghr_", r"ghr_[A-Za-z0-9]{30,}"),
        ("github_pat_", r"github_pat_[A-Za-z0-9_]{22,}"),
        ("glpat-", r"glpat-[A-Za-z0-9_\-]{20,}"),                           # GitLab
        ("AKIA", r"AKIA[A-Z0-9]{16}"),                                      # AWS access key ids
        ("ASIA", r"ASIA[A-Z0-9]{16}"),
        ("xox", r"xox[abposre]-[A-Za-z0-9\-]{10,}"),                        # Slack
        ("xapp-", r"xapp-[A-Za-z0-9\-]{10,}"),
        ("AIza", r"AIza[0-9A-Za-z_\-]{35}"),                                # Google
        ("hf_", r"hf_[A-Za-z0-9]{30,}"),                                    # Hugging Face
        ("npm_", r"npm_[A-Za-z0-9]{36}"),
        ("pypi-", r"pypi-[A-Za-z0-9_\-]{50,}"),
        ("SG.", r"SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"),          # SendGrid
        ("eyJ", r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"),  # JWT
    ]
]
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def find_private_keys(text: str, out: list[Span]) -> None:
    begin = text.find("-----BEGIN ")
    while begin != -1:
        match = _PEM_BEGIN.match(text, begin)
        end = begin + 11
        if match:
            body = match.end()
            stop = text.find("\x00", body)            # the end of this text
            stop = len(text) if stop < 0 else stop
            marker = f"-----END {match.group(1)}PRIVATE KEY-----"
            closing = text.find(marker, body, min(stop, body + _PEM_BODY + len(marker)))
            if closing != -1 and closing <= body + _PEM_BODY:
                end = closing + len(marker)
            elif stop - body <= _PEM_BODY:
                end = stop
            else:
                end = -1                               # too long to be one key
            if end != -1:
                out.append((begin, end, "PRIVATE_KEY"))
            else:
                end = begin + 11
        begin = text.find("-----BEGIN ", end)


def find_api_keys(text: str, out: list[Span]) -> None:
    for prefix, pattern in _KEY_FORMATS:
        hit = text.find(prefix)
        while hit != -1:
            match = None
            if hit == 0 or text[hit - 1] not in _WORD_CHARS:
                match = pattern.match(text, hit)
            if match:
                out.append((hit, match.end(), "API_KEY"))
                hit = text.find(prefix, match.end())
            else:
                hit = text.find(prefix, hit + 1)


# ----------------------------------------------------------------- high-entropy secrets

_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{%d,}={0,2}")
_HEX = frozenset("0123456789abcdefABCDEF")


@lru_cache(maxsize=16)
def _token_pattern(min_length: int) -> re.Pattern[str]:
    return re.compile(_TOKEN.pattern % min_length)


_DROP_DIGITS = str.maketrans("", "", "0123456789")
_DROP_UPPER = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DROP_LOWER = str.maketrans("", "", "abcdefghijklmnopqrstuvwxyz")
_DROP_HEX = str.maketrans("", "", "0123456789abcdefABCDEF")


_C_LOG_C = [0.0] + [c * math.log2(c) for c in range(1, 4097)]


def shannon_entropy(token: str) -> float:
    """Bits per character: log2(n) - sum(c log2 c) / n over the character counts c."""
    size = len(token)
    counts = Counter(token).values()
    if size > 4096:
        return -sum(c / size * math.log2(c / size) for c in counts)
    return math.log2(size) - sum(map(_C_LOG_C.__getitem__, counts)) / size


def looks_random(token: str, ratio: float) -> bool:
    """A secret-like token: mixes character classes and has nearly the entropy of random text.
    (Counting with str.translate keeps this C-speed: PEM bodies and keys are full of candidates.)"""
    size = len(token)
    digits = size - len(token.translate(_DROP_DIGITS))
    upper = size - len(token.translate(_DROP_UPPER))
    lower = size - len(token.translate(_DROP_LOWER))
    if upper == 0 and lower == 0:
        return False
    if digits < 2 and not (upper >= 3 and lower >= 3 and size >= 24):
        return False
    if "/" in token and token.count("/") * 12 > size:      # a path, not a secret
        return False
    alphabet = 64 if token.translate(_DROP_HEX) else 16
    return shannon_entropy(token) >= ratio * math.log2(min(size, alphabet))


def find_secrets(text: str, out: list[Span], min_length: int, ratio: float,
                 covered: list[tuple[int, int]] | None = None) -> None:
    """`covered`: sorted spans already found (keys, private keys), whose tokens need no entropy test."""
    starts = [start for start, _ in covered] if covered else []
    for match in _token_pattern(min_length).finditer(text):
        if starts:
            i = bisect.bisect_right(starts, match.start()) - 1
            if i >= 0 and covered[i][1] >= match.end():
                continue
        token = match.group().rstrip("=")
        if looks_random(token, ratio):
            out.append((match.start(), match.end(), "SECRET"))


# ----------------------------------------------------------------- IP addresses

_IPV4 = re.compile(r"\d(?<![0-9A-Za-z_.]\d)\d{0,2}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![0-9A-Za-z_]|\.\d)")
_IPV6_SEED = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f:]|::")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")


def find_ipv4(text: str, out: list[Span]) -> None:
    for match in _IPV4.finditer(text):
        if all(int(part) <= 255 for part in match.group().split(".")):
            out.append((match.start(), match.end(), "IP_ADDRESS"))


def find_ipv6(text: str, out: list[Span]) -> None:
    pos = 0
    while True:
        seed = _IPV6_SEED.search(text, pos)
        if seed is None:
            return
        start, end = seed.start(), seed.end()
        while start > 0 and text[start - 1] in _IPV6_CHARS:
            start -= 1
        while end < len(text) and text[end] in _IPV6_CHARS:
            end += 1
        pos = end
        candidate = text[start:end].rstrip(".")
        if candidate.count(":") < 2 or (start > 0 and text[start - 1].isalnum()):
            continue
        if end < len(text) and (text[end].isalnum() or text[end] == "_"):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        out.append((start, start + len(candidate), "IP_ADDRESS"))


# ----------------------------------------------------------------- numbers: SSN, cards, national IDs, phones

# A run of digits with the separators people write numbers with; validated below.
# It starts with a character class, so the regex engine skips quickly to candidate positions.
# Word boundaries here (and for IPv4 addresses and digit-led IDs) are ASCII word characters only:
# in scripts written without spaces (Japanese, Chinese, Thai) a number touches the words around it.
_NUMBER = re.compile(
    r"[+(\d][\d \-./()\u00a0+]{5,28}\d(?:\ ?(?:x|ext\.?|\#)\ ?\d{1,6})?(?![0-9A-Za-z_]|-\d|\.\d)"
)
_NUMBER_BAD_BEFORE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-/")
_DOTTED_QUAD = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_SSN = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")
_CPF = re.compile(r"\d{3}\.\d{3}\.\d{3}-\d{2}")
_GROUPED_9 = re.compile(r"\d{3}([ -])\d{3}\1\d{3}")
_GROUPED_12 = re.compile(r"\d{4}([ -])\d{4}\1\d{4}")
_DATE = re.compile(
    r"(?:19|20)\d\d([-/. ])\d{1,2}\1\d{1,2}|\d{1,2}([-/. ])\d{1,2}\2(?:19|20)?\d\d"
    r"|(?:19|20)\d\d ?- ?(?:19|20)\d\d"
)
_PHONE_CONTEXT = re.compile(r"phone|tel\b|call|mobile|cell|fax|whatsapp|sms|text me|ring|dial|reach", re.I)
_ID_CONTEXT = re.compile(
    r"ssn|social|insurance|bsn|sofi|pesel|cpf|nir|\bsin\b|aadhaar|\bid\b|identity|passport|tax|steuer|"
    r"nif|nie|dni|fiscal|citizen|national", re.I)


def _context(text: str, start: int) -> str:
    return text[max(0, start - 40):start]


def _context_says_phone(context: str) -> bool:
    """The nearest keyword before the number decides between a phone and an ID."""
    phone = max((m.end() for m in _PHONE_CONTEXT.finditer(context)), default=-1)
    ident = max((m.end() for m in _ID_CONTEXT.finditer(context)), default=-1)
    return phone > ident


def _national_id(candidate: str, digits: str, seps: set[str], context: str) -> bool:
    n = len(digits)
    plain = not seps
    if _CPF.fullmatch(candidate):
        return True
    if plain and n == 11 and (ck.br_cpf_ok(digits) or ck.pl_pesel_ok(digits)):
        return not _context_says_phone(context)
    if n == 15 and seps <= {" "} and ck.fr_nir_ok(digits):
        return True
    if n == 9 and _GROUPED_9.fullmatch(candidate) and ck.luhn_ok(digits):
        return not _context_says_phone(context)                # Canadian SIN
    if n == 12 and (_GROUPED_12.fullmatch(candidate) or plain) and ck.in_aadhaar_ok(digits):
        return bool(_GROUPED_12.fullmatch(candidate)) or bool(_ID_CONTEXT.search(context))
    if plain and n == 9 and ck.nl_bsn_ok(digits):
        return not _context_says_phone(context)
    return False


# The North American plan written the North American way: area code and exchange start with 2-9.
_NANP_SHAPE = re.compile(r"(?:\([2-9]\d\d\) ?|[2-9]\d\d[-. ])[2-9]\d\d[-. ]\d{4}(?:\ ?(?:x|ext\.?|\#)\ ?\d{1,6})?")
# Regions whose national numbers never begin with 0 (no trunk prefix "0", no leading 0 digits).
_NO_LEADING_ZERO = frozenset({"US", "CA", "ES", "PL"})
_EXTENSION = re.compile(r"\ ?(?:x|ext\.?|#)\ ?\d")
_NUMBER_SEPARATORS = " -./()\u00a0+"
_DROP_SEPARATORS = str.maketrans("", "", _NUMBER_SEPARATORS)
_DROP_ASCII_DIGITS = str.maketrans("", "", "0123456789")

# libphonenumber compiles its metadata patterns on every call unless told to keep them.
phonenumbers.enable_pattern_cache()


def prepare_regions(regions: tuple[str, ...]) -> None:
    """Digest the regions' metadata now (the filter does it at start), not in the first scan."""
    for region in (*regions, "US"):
        phones.region_plan(region)


def _plain_digits(text: str) -> str | None:
    """The digits of a candidate libphonenumber would read as digits only (no "+", extension,
    letters or non-ASCII digits), else None."""
    digits = text.translate(_DROP_SEPARATORS)
    if "+" in text or not (digits.isascii() and digits.isdigit()) or _EXTENSION.search(text):
        return None
    return digits


@lru_cache(maxsize=4096)
def _is_phone(candidate: str, regions: tuple[str, ...]) -> bool:
    """Does libphonenumber take it for a phone number: possible with its "+" country code, valid
    for one of `regions` without, or a possible 10-digit North American number written with
    separators? Plain candidates are answered from its metadata (traces.redaction.phones, the
    same verdicts without a parse() per region); the others by phonenumbers.parse."""
    text = candidate
    if text.startswith("00"):
        text = "+" + text[2:]
    try:
        if text.lstrip("(").startswith("+"):
            rest = text.lstrip("(")[1:]
            digits = _plain_digits(rest)
            verdict = phones.is_possible_international(digits) if digits is not None else None
            if verdict is None:
                verdict = phonenumbers.is_possible_number(phonenumbers.parse(text, None))
            return verdict
        if _NANP_SHAPE.fullmatch(text) and ("US" in regions or "CA" in regions):
            return True                       # (415) 555-0123, 415-555-0123, 415.555.0123 [x12]
        digits = _plain_digits(text)
        leading_zero = text.lstrip("( ").startswith("0")
        for region in regions:
            if leading_zero and region in _NO_LEADING_ZERO:
                continue                      # a trunk "0" never starts a number there
            national = phones.regional_national_number(digits, region) if digits is not None else None
            if national is phones.RAISES:
                return False                  # parse() would raise: no number at all
            if national is None:
                valid = phonenumbers.is_valid_number_for_region(phonenumbers.parse(text, region), region)
            else:
                valid = phones.valid_national_number(national, phones.region_plan(region))
            if valid:
                return True
        # Written like a phone number (grouped, 10 digits: the North American plan's shape)?
        if not any(sep in candidate for sep in "-.() "):
            return False
        national = phones.regional_national_number(digits, "US") if digits is not None else None
        if national is phones.RAISES:
            return False
        if national is not None:
            possible = phones.is_possible(national, 1)
            if possible is not None:
                return possible and len(national.lstrip("0") or "0") == 10
        number = phonenumbers.parse(text, "US")
        return phonenumbers.is_possible_number(number) and len(number.national_number.__str__()) == 10
    except phonenumbers.NumberParseException:
        return False


def classify_number(text: str, start: int, end: int, regions: tuple[str, ...]) -> str | None:
    candidate = text[start:end]
    core = _EXTENSION.split(candidate, maxsplit=1)[0]
    digits = core.translate(_DROP_SEPARATORS)
    n = len(digits)
    if n < 7 or n > 19 or not digits.isdigit():
        return None
    # (Dates have at most 8 digits, dotted quads 12, SSNs 9: most candidates skip these tests.)
    if n <= 8 and _DATE.fullmatch(core) or n <= 12 and _DOTTED_QUAD.fullmatch(core):
        return None
    ssn = _SSN.fullmatch(core) if n == 9 else None
    if ssn:
        return "US_SSN" if ck.us_ssn_ok(ssn.group(1), ssn.group(3), ssn.group(4)) else None
    seps = set(core.translate(_DROP_ASCII_DIGITS))
    context = _context(text, start)
    if n == 12 and _GROUPED_12.fullmatch(core) and ck.in_aadhaar_ok(digits):
        return "NATIONAL_ID"                                    # Aadhaar, written 4-4-4
    if 12 <= n <= 19 and seps <= {" ", "-"} and core == candidate and ck.luhn_ok(digits) \
            and ck.card_prefix_ok(digits) and not core.startswith("+"):
        return "CREDIT_CARD"
    if not core.startswith(("+", "(+")) and _national_id(core, digits, seps, context):
        return "NATIONAL_ID"
    if n <= 15 and _is_phone(candidate.replace("\u00a0", " "), regions):
        return "PHONE"
    return None


def find_numbers(text: str, out: list[Span], regions: tuple[str, ...]) -> None:
    for match in _NUMBER.finditer(text):
        start, end = match.span()
        if start > 0 and text[start - 1] in _NUMBER_BAD_BEFORE:
            continue
        if text[start] == "(" and ")" not in text[start:end]:
            start += 1
        if text[start] == "+" and text[start + 1] == "+":
            continue
        kind = classify_number(text, start, end, regions)
        if kind:
            out.append((start, end, kind))
        elif text.count(" ", start, end) >= 2:
            _find_in_groups(text, start, end, out, regions)


_GROUP = re.compile(r"[^ ]+")


def _find_in_groups(text: str, start: int, end: int, out: list[Span], regions: tuple[str, ...]) -> None:
    """Numbers written side by side ("4111 1111 1111 1111 123-45-6789"): the longest valid runs of
    whole space-separated groups, left to right."""
    groups = [m.span() for m in _GROUP.finditer(text, start, end)]
    counts = [sum(map(str.isdigit, text[a:b])) for a, b in groups]     # digits per group
    if sum(c >= 3 for c in counts) < 2:
        return
    before = [0]                                  # digits in groups[:i]
    for count in counts:
        before.append(before[-1] + count)
    i = 0
    while i < len(groups):
        for j in range(len(groups), i, -1):
            # classify_number wants 7 to 19 digits (plus at most 6 of an extension): skip the
            # other runs without slicing them.
            if (i, j) == (0, len(groups)) or not 7 <= before[j] - before[i] <= 25:
                continue
            a, b = groups[i][0], groups[j - 1][1]
            if text[a].isdigit() or text[a] in "+(":
                kind = classify_number(text, a, b, regions)
                if kind:
                    out.append((a, b, kind))
                    i = j
                    break
        else:
            i += 1


# ----------------------------------------------------------------- IBAN and letter-led national IDs

# One leading capital (a character class the regex engine skips to) that starts a word, then
# the alternatives.
_LETTER_IDS = re.compile(
    r"(?<![A-Za-z0-9])[A-Z](?:(?P<iban>[A-Z]\d{2}(?:\ ?[A-Z0-9]){11,32})"
    r"|(?P<nino>[A-CEGHJ-NPR-TW-Z]\ ?\d{2}\ ?\d{2}\ ?\d{2}\ ?[A-D])"
    r"|(?P<cf>[A-Z]{5}\d{2}[A-EHLMPR-T]\d{2}[A-Z]\d{3}[A-Z])"
    r"|(?P<nie>\d{7}-?[A-Z]))"
)
_NINO_FIRST = frozenset("ABCEGHJKLMNOPRSTWXYZ")
# Spanish DNI (8 digits and a letter) or Corsican French NIR (2A / 2B in it), in one scan that
# starts with a character class (no alternation up front), which the regex engine skips to.
_DIGIT_IDS = re.compile(r"\d(?:\d{7}-?[A-Z]|\d{4}2[AB]\d{8})(?![0-9A-Za-z_])")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _trim_iban(text: str) -> str | None:
    """The valid IBAN a greedy match starts with (the match may run on into the next words).

    The registered length for the country is tried first; then any length whose mod-97 check
    passes, because some issuers and generators write shorter national account numbers."""
    compact = text.replace(" ", "")
    registered = ck.IBAN_LENGTHS.get(compact[:2])
    if registered is None:
        return None
    checks = ck.iban_checks(compact)           # every prefix length's mod-97 check in one pass
    lengths = [registered] + [n for n in range(min(34, len(compact)), 14, -1) if n != registered]
    for length in lengths:
        if checks.get(length):
            seen, i = 0, 0                     # back to the length with spaces
            while seen < length:
                if text[i] != " ":
                    seen += 1
                i += 1
            return text[:i]
    return None


def find_letter_ids(text: str, out: list[Span]) -> None:
    for match in _LETTER_IDS.finditer(text):
        start = match.start()
        if start > 0 and text[start - 1] in _ALNUM:
            continue
        kind = match.lastgroup
        if kind == "iban":
            valid = _trim_iban(match.group())
            if valid:
                out.append((start, start + len(valid), "IBAN"))
            continue
        end = match.end()
        if end < len(text) and text[end] in _ALNUM:
            continue
        value = match.group().replace(" ", "").replace("-", "")
        if kind == "nie" and value[0] not in "XYZ" or kind == "nino" and value[0] not in _NINO_FIRST:
            continue
        if kind == "nino" or (kind == "cf" and ck.it_fiscal_code_ok(value)) or (kind == "nie" and ck.es_dni_ok(value)):
            out.append((start, end, "NATIONAL_ID"))
    for match in _DIGIT_IDS.finditer(text):
        start = match.start()
        value = match.group().replace("-", "")
        if (start == 0 or not text[start - 1].isalnum()) and (ck.es_dni_ok(value) if len(value) == 9 else ck.fr_nir_ok(value)):
            out.append((start, match.end(), "NATIONAL_ID"))
