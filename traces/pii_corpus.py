"""A labelled PII corpus, generated with faker in several locales, to measure a privacy filter.

Each row is {"text", "spans": [{"start", "end", "type"}], "locale"}: sentences that embed known
values (e-mails, phones, cards, IBANs, IPs, URLs with credentials, SSNs and other national IDs, API
keys, private keys, random secrets), optionally between lines of real conversation. Deterministic
for a given seed. Used by tests and bench/ (faker is a dev dependency, imported only here).
"""

from __future__ import annotations

import base64
import json
import random
import string
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote

LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "pl_PL", "en_IN", "en_CA", "ja_JP"]

TEMPLATES: dict[str, list[str]] = {
    "EMAIL": ["my email is {}", "write to {} when you can", "Contact: {}", "cc {} on that thread",
              "({}) is my work address", "send it to {}."],
    "PHONE": ["call me at {}", "my number is {}", "Tel: {}", "text me on {} tonight", "phone {} after 5pm",
              "you can reach the office on {}."],
    "CREDIT_CARD": ["my card number is {}", "charge {} please", "Card: {} exp 09/27", "I paid with {}."],
    "IBAN": ["wire it to {}", "IBAN: {}", "my account is {} at the local bank", "transfer to {} by Friday"],
    "IP_ADDRESS": ["the server is at {}", "ssh into {} and restart it", "blocked IP {} again", "ping {}"],
    "URL_CREDENTIALS": ["clone from {}", "the db url is {}", "use {} for the proxy", "endpoint: {}"],
    "US_SSN": ["my SSN is {}", "social security number {}", "SSN: {}", "ssn {} on the form"],
    "NATIONAL_ID": ["my ID number is {}", "national id: {}", "here is my {kind} {}", "{kind} {} for the form"],
    "API_KEY": ["my key is {}", "export API_KEY={}", "token: {}", "use this token {} for the API"],
    "PRIVATE_KEY": ["here is the key:\n{}\nkeep it safe", "{}"],
    "SECRET": ["password={}", "the secret is {}", "client_secret: {}", "set SECRET_TOKEN to {}"],
}

FILLERS = [
    "Hi there, hope you're well.", "Thanks so much for the help yesterday!", "Let me know if that works.",
    "I'll be around all afternoon.", "Quick question about the invoice.", "No rush on this one.",
    "We talked about this last week.", "See you at the meeting.", "That sounds great to me.",
]


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


_ALNUM = string.ascii_letters + string.digits


def _b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def make_api_key(rng: random.Random) -> str:
    kind = rng.randrange(11)
    if kind == 0:
        return "sk-proj-" + _rand(rng, _ALNUM + "_-", 48)
    if kind == 1:
        return "sk-" + _rand(rng, _ALNUM, 48)
    if kind == 2:
        return "ghp_" + _rand(rng, _ALNUM, 36)
    if kind == 3:
        return "github_pat_" + _rand(rng, _ALNUM, 22) + "_" + _rand(rng, _ALNUM, 59)
    if kind == 4:
        return "AKIA" + _rand(rng, string.ascii_uppercase + string.digits, 16)
    if kind == 5:
        return f"xoxb-{rng.randrange(10**11, 10**12)}-{rng.randrange(10**12, 10**13)}-" + _rand(rng, _ALNUM, 24)
    if kind == 6:
        header = _b64url({"alg": "HS256", "typ": "JWT"})
        payload = _b64url({"sub": str(rng.randrange(10**9)), "iat": rng.randrange(10**9, 2 * 10**9)})
        return f"{header}.{payload}." + _rand(rng, _ALNUM + "_-", 43)
    if kind == 7:
        return "AIza" + _rand(rng, _ALNUM + "_-", 35)
    if kind == 8:
        return "hf_" + _rand(rng, string.ascii_letters, 34)
    if kind == 9:
        return "glpat-" + _rand(rng, _ALNUM + "_-", 20)
    return "sk_live_" + _rand(rng, _ALNUM, 24)


def make_private_key(rng: random.Random) -> str:
    label = rng.choice(["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED "])
    lines = [_rand(rng, string.ascii_letters + string.digits + "+/", 64) for _ in range(rng.randrange(3, 9))]
    return f"-----BEGIN {label}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {label}PRIVATE KEY-----"


def make_secret(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return _rand(rng, "0123456789abcdef", rng.choice([32, 40, 64]))
    if kind == 1:
        return _rand(rng, string.ascii_letters + string.digits + "+/", 40)     # AWS-secret-like
    return _rand(rng, _ALNUM + "-_", rng.randrange(24, 44))


def make_nino(rng: random.Random) -> str:
    first = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    digits = f"{rng.randrange(10**6):06d}"
    spaced = rng.random() < 0.5
    body = f"{digits[:2]} {digits[2:4]} {digits[4:]} " if spaced else digits
    return f"{first}{second}{' ' if spaced else ''}{body}{rng.choice('ABCD')}"


def make_aadhaar(rng: random.Random) -> str:
    from traces.redaction.checksums import in_aadhaar_ok

    while True:
        number = str(rng.randrange(2, 10)) + "".join(rng.choice(string.digits) for _ in range(11))
        if in_aadhaar_ok(number):
            return number


def _national_id(fake: Any, locale: str, rng: random.Random) -> tuple[str, str] | None:
    if locale == "en_GB":
        return make_nino(rng), "National Insurance number"
    if locale in ("it_IT",):
        return fake.ssn(), "codice fiscale"
    if locale == "fr_FR":
        return fake.ssn(), "numero de securite sociale"
    if locale == "nl_NL":
        return fake.ssn(), "BSN"
    if locale == "pt_BR":
        return fake.cpf(), "CPF"
    if locale == "pl_PL":
        return fake.pesel(), "PESEL"
    if locale == "es_ES":
        return (fake.nif() if rng.random() < 0.5 else fake.nie()), "DNI"
    if locale == "en_IN":
        number = make_aadhaar(rng)         # faker's aadhaar_id uses Luhn; the real check is Verhoeff
        return (f"{number[:4]} {number[4:8]} {number[8:]}" if rng.random() < 0.5 else number), "Aadhaar"
    if locale == "en_CA":
        return fake.ssn(), "SIN"
    return None


def _card(fake: Any, rng: random.Random) -> str:
    number = fake.credit_card_number()
    style = rng.randrange(3)
    if style == 1 and len(number) == 16:
        return " ".join(number[i:i + 4] for i in range(0, 16, 4))
    if style == 2 and len(number) == 16:
        return "-".join(number[i:i + 4] for i in range(0, 16, 4))
    return number


def _iban(fake: Any, rng: random.Random) -> str:
    number = fake.iban()
    if rng.random() < 0.4:
        return " ".join(number[i:i + 4] for i in range(0, len(number), 4))
    return number


def _value(kind: str, fake: Any, locale: str, rng: random.Random) -> tuple[str, str] | None:
    """(value, kind label for templates) or None when this locale has no such value."""
    if kind == "EMAIL":
        return (fake.email() if rng.random() < 0.7 else fake.free_email()), ""
    if kind == "PHONE":
        return fake.phone_number(), ""
    if kind == "CREDIT_CARD":
        return _card(fake, rng), ""
    if kind == "IBAN":
        return _iban(fake, rng), ""
    if kind == "IP_ADDRESS":
        return (fake.ipv4() if rng.random() < 0.6 else fake.ipv6()), ""
    if kind == "URL_CREDENTIALS":
        scheme = rng.choice(["https", "postgres", "mysql", "ftp", "redis", "amqp"])
        user = fake.user_name()
        password = fake.password(length=rng.randrange(8, 20), special_chars=False)
        path = quote(fake.word(), safe="")          # a URL has no spaces ("w końcu" -> "w%20ko%C5%84cu")
        return f"{scheme}://{user}:{password}@{fake.domain_name()}/{path}", ""
    if kind == "US_SSN":
        return (fake.ssn() if locale == "en_US" else None), ""  # type: ignore[return-value]
    if kind == "NATIONAL_ID":
        return _national_id(fake, locale, rng)
    if kind == "API_KEY":
        return make_api_key(rng), ""
    if kind == "PRIVATE_KEY":
        return make_private_key(rng), ""
    if kind == "SECRET":
        return make_secret(rng), ""
    raise ValueError(kind)


def generate_pii_corpus(n: int, seed: int = 0, locales: Sequence[str] = LOCALES,
                        kinds: Sequence[str] = tuple(TEMPLATES), fillers: Sequence[str] | None = None,
                        max_items: int = 3) -> list[dict[str, Any]]:
    """`n` texts, each with 1..max_items labelled values in the context of a template sentence."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {}
    for i, locale in enumerate(locales):
        fake = Faker(locale)
        fake.seed_instance(seed * 1000 + i)
        fakers[locale] = fake
    fillers = list(fillers or FILLERS)
    rows = []
    while len(rows) < n:
        locale = rng.choice(list(locales))
        fake = fakers[locale]
        parts: list[str] = []
        spans: list[dict[str, Any]] = []
        cursor = 0

        def add(piece: str) -> None:
            nonlocal cursor
            parts.append(piece)
            cursor += len(piece)

        if rng.random() < 0.5:
            add(rng.choice(fillers) + " ")
        for _ in range(rng.randrange(1, max_items + 1)):
            kind = rng.choice(list(kinds))
            made = _value(kind, fake, locale, rng)
            if made is None or made[0] is None:
                continue
            value, label = made
            template = rng.choice(TEMPLATES[kind])
            if "{kind}" in template and not label:
                template = TEMPLATES[kind][0]
            before, after = template.replace("{kind}", label).split("{}")
            add(before)
            spans.append({"start": cursor, "end": cursor + len(value), "type": kind})
            add(value)
            add(after + rng.choice([" ", "\n", ". ", " and "]))
        if rng.random() < 0.5:
            add(rng.choice(fillers))
        if spans:
            rows.append({"text": "".join(parts), "spans": spans, "locale": locale})
    return rows


# ---------------------------------------------------------------------------- scoring


def score(corpus: Sequence[dict[str, Any]], predicted: Iterable[Sequence[tuple[int, int, str]]],
          min_overlap: float = 0.5) -> dict[str, dict[str, float]]:
    """Per-type recall and precision.

    recall: a prediction of the same type covers at least `min_overlap` of the gold span (it was
        found, perhaps with a ragged edge);
    full_recall: predictions of the same type cover every character of it (nothing of the value
        is left in clear text);
    any_type_recall / full_any_type_recall: the same with predictions of any type (it was
        redacted, perhaps under another label);
    precision: predictions that overlap a gold span of their type."""
    stats: dict[str, dict[str, float]] = {}

    def entry(kind: str) -> dict[str, float]:
        return stats.setdefault(kind, {"gold": 0, "tp": 0, "full": 0, "caught": 0, "caught_full": 0,
                                       "predicted": 0, "fp": 0})

    def covers(p: tuple[int, int, str], g: dict[str, Any]) -> bool:
        overlap = min(p[1], g["end"]) - max(p[0], g["start"])
        return overlap >= min_overlap * (g["end"] - g["start"])

    def fully_covered(preds: list[tuple[int, int, str]], g: dict[str, Any]) -> bool:
        cursor = g["start"]
        for start, end, _ in sorted(preds):
            if start > cursor:
                break
            cursor = max(cursor, end)
            if cursor >= g["end"]:
                return True
        return cursor >= g["end"]

    for row, preds in zip(corpus, predicted):
        preds = list(preds)
        for gold in row["spans"]:
            e = entry(gold["type"])
            e["gold"] += 1
            same = [p for p in preds if p[2] == gold["type"]]
            e["tp"] += any(covers(p, gold) for p in same)
            e["full"] += fully_covered(same, gold)
            e["caught"] += any(covers(p, gold) for p in preds)
            e["caught_full"] += fully_covered(preds, gold)
        for p in preds:
            e = entry(p[2])
            e["predicted"] += 1
            hit = any(g["type"] == p[2] and min(p[1], g["end"]) > max(p[0], g["start"]) for g in row["spans"])
            e["fp"] += not hit
    for e in stats.values():
        gold = e["gold"]
        e["recall"] = e["tp"] / gold if gold else float("nan")
        e["full_recall"] = e["full"] / gold if gold else float("nan")
        e["any_type_recall"] = e["caught"] / gold if gold else float("nan")
        e["full_any_type_recall"] = e["caught_full"] / gold if gold else float("nan")
        e["precision"] = (e["predicted"] - e["fp"]) / e["predicted"] if e["predicted"] else float("nan")
    return stats


def predictions_of(find: Callable[[list[str]], list[list[tuple[int, int, str]]]],
                   corpus: Sequence[dict[str, Any]]) -> list[list[tuple[int, int, str]]]:
    return find([row["text"] for row in corpus])
