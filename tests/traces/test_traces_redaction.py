"""The privacy filter on a faker PII corpus (known spans, twelve locales) and on real chitchat."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from traces.config import PrivacySettings
from traces.pii_corpus import make_api_key, make_private_key, score
from traces.redaction import PrivacyFilter
from traces.redaction import checksums as ck

# The targets: recall >= 0.99 on e-mails, cards, IBANs, SSNs, IPs and known key formats.
STRICT = ["EMAIL", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS", "API_KEY", "PRIVATE_KEY"]


@pytest.fixture(scope="module")
def privacy() -> PrivacyFilter:
    return PrivacyFilter()


@pytest.fixture(scope="module")
def corpus_scores(privacy, pii_corpus):
    predicted = privacy.scan_many([row["text"] for row in pii_corpus])
    return score(pii_corpus, [[tuple(s) for s in spans] for spans in predicted])


@pytest.mark.parametrize("kind", STRICT)
def test_recall_on_structured_types(corpus_scores, kind):
    stats = corpus_scores[kind]
    assert stats["gold"] >= 40, f"corpus too small for {kind}"
    assert stats["recall"] >= 0.99, f"{kind}: recall {stats['recall']:.4f}"
    # Found is not enough: every character of the value must be covered (no "jö" left of
    # "jörg@x.de", no trailing digits of a card).
    assert stats["full_recall"] >= 0.99, f"{kind}: full-coverage recall {stats['full_recall']:.4f}"


@pytest.mark.parametrize("kind", ["PHONE", "NATIONAL_ID", "SECRET", "URL_CREDENTIALS"])
def test_recall_on_looser_types(corpus_scores, kind):
    # Phones come in every locale's format (faker's are not all valid numbers), secrets are only
    # recognisable by their entropy: still, nearly all of them must go, whole.
    assert corpus_scores[kind]["any_type_recall"] >= 0.97, corpus_scores[kind]
    assert corpus_scores[kind]["full_any_type_recall"] >= 0.97, corpus_scores[kind]


def test_score_tells_found_from_fully_covered():
    row = {"text": "mail jörg@x.de now", "spans": [{"start": 5, "end": 14, "type": "EMAIL"}]}
    partial = score([row], [[(7, 14, "EMAIL")]])["EMAIL"]            # only "rg@x.de": "jö" leaks
    assert partial["recall"] == 1.0 and partial["full_recall"] == 0.0
    pieces = score([row], [[(5, 9, "EMAIL"), (9, 14, "EMAIL")]])["EMAIL"]
    assert pieces["full_recall"] == 1.0
    other = score([row], [[(5, 14, "SECRET")]])["EMAIL"]
    assert other["full_recall"] == 0.0 and other["full_any_type_recall"] == 1.0


@pytest.mark.parametrize(("text", "value"), [
    ("schreib an jörg@x.de bitte", "jörg@x.de"),
    ("«José.Núñez@correo.es»", "José.Núñez@correo.es"),
    ("mail: 用户@例子.广告", "用户@例子.广告"),
    ("e\u0301mile@exemple.fr est là", "e\u0301mile@exemple.fr"),        # a combining accent
    ("write to zoë_o'neil+news@mail.co.uk.", "zoë_o'neil+news@mail.co.uk"),
])
def test_internationalized_email_local_parts_are_redacted_whole(privacy, text, value):
    start = text.index(value)
    assert [(s.start, s.end, s.type) for s in privacy.scan(text)] == [(start, start + len(value), "EMAIL")]


@pytest.mark.parametrize(("text", "value", "kind"), [
    ("Karte ４１１１ １１１１ １１１１ １１１１ bitte", "４１１１ １１１１ １１１１ １１１１", "CREDIT_CARD"),
    ("カード４１１１１１１１１１１１１１１１です", "４１１１１１１１１１１１１１１１", "CREDIT_CARD"),
    ("ruf an: ＋４９ ３０ ９０１８２０", "＋４９ ３０ ９０１８２０", "PHONE"),
    ("call (４１５) ５５５-０１９９ today", "(４１５) ５５５-０１９９", "PHONE"),
    ("IBAN ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００ ok", "ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００", "IBAN"),
    ("SSN ١٢٣-٤٥-٦٧٨٩ please", "١٢٣-٤٥-٦٧٨٩", "US_SSN"),                  # Arabic-Indic digits
    ("card ४१११ ११११ ११११ ११११", "४१११ ११११ ११११ ११११", "CREDIT_CARD"),   # Devanagari digits
])
def test_non_ascii_digits_do_not_bypass_numbers(privacy, text, value, kind):
    start = text.index(value)
    assert [(s.start, s.end, s.type) for s in privacy.scan(text)] == [(start, start + len(value), kind)]
    # the same value in ASCII digits gets the same placeholder within a conversation
    ascii_text = text.translate({code: str(int(chr(code))) for code in map(ord, value) if chr(code).isdecimal()})
    ascii_text = ascii_text.translate({0xFF21 + i: chr(0x41 + i) for i in range(26)} | {0xFF0B: "+"})
    [result] = privacy.redact_conversations([[text, ascii_text]])
    assert result.texts[0] == result.texts[1] and result.counts == {kind: 1}


def test_precision_per_type(corpus_scores):
    for kind, stats in corpus_scores.items():
        if stats["predicted"] >= 20:
            assert stats["precision"] >= 0.97, (kind, stats)


def test_real_conversations_are_left_almost_untouched(privacy, chitchat):
    texts = [m.content for trace in chitchat[:2500] for m in trace.messages]
    spans = privacy.scan_many(texts)
    flagged = sum(1 for s in spans if s)
    assert len(texts) > 10_000
    # chitchat has a handful of real e-mails, phone numbers and handles; anything beyond a few
    # per thousand turns would mean the filter eats ordinary words and numbers.
    assert flagged / len(texts) < 0.003, flagged


def test_spans_are_in_the_input_offsets(privacy):
    text = "Ünïcödé first 😀 — write to anna.schmidt@example.de or call +49 30 901820, IBAN DE89 3704 0044 0532 0130 00."
    found = {(text[s.start:s.end], s.type) for s in privacy.scan(text)}
    assert ("anna.schmidt@example.de", "EMAIL") in found
    assert ("+49 30 901820", "PHONE") in found
    assert ("DE89 3704 0044 0532 0130 00", "IBAN") in found


def test_batch_scan_equals_one_by_one(privacy, pii_corpus, chitchat):
    rng = random.Random(3)
    texts = [row["text"] for row in pii_corpus[:300]] + [m.content for t in chitchat[:40] for m in t.messages]
    rng.shuffle(texts)
    batch = privacy.scan_many(texts)
    for text, spans in zip(texts, batch):
        assert list(spans) == privacy.scan(text)


def test_placeholders_are_typed_and_consistent_within_a_conversation(privacy):
    turns = ["I'm bob@example.com, card 4111-1111-1111-1111", "again: BOB@example.com",
             "and my colleague: alice@example.org"]
    [result] = privacy.redact_conversations([turns])
    assert result.texts == ["I'm <EMAIL_1>, card <CREDIT_CARD_1>", "again: <EMAIL_1>",
                            "and my colleague: <EMAIL_2>"]
    assert result.counts == {"EMAIL": 2, "CREDIT_CARD": 1}
    [other] = privacy.redact_conversations([["alice@example.org"]])
    assert other.texts == ["<EMAIL_1>"]                      # numbering is per conversation


@pytest.mark.parametrize("maker", [make_api_key, make_private_key])
def test_every_known_key_format(privacy, maker):
    rng = random.Random(5)
    for _ in range(60):
        key = maker(rng)
        spans = privacy.scan(f"here: {key} done")
        assert [(s.start, s.end) for s in spans] == [(6, 6 + len(key))], key


def test_overlaps_resolve_to_the_most_specific_type(privacy):
    url = "postgres://admin:s3cretPassw0rd@db.internal.example.com:5432/prod"
    spans = privacy.scan(f"dsn {url} ok")
    assert [(s.type, s.start, s.end) for s in spans] == [("URL_CREDENTIALS", 4, 4 + len(url))]


def test_things_that_are_not_pii(privacy):
    for text in ["I was born in 1990 and moved in 2005-2007.", "Meet at 10:30, room 4B.",
                 "The date was 2018-05-02 and it cost $1,250.00", "version 1.2.3 of the app",
                 "antidisestablishmentarianism is a long word", "call me maybe, 555",
                 "the hash function returns ThisIsNotASecretAtAll"]:
        assert privacy.scan(text) == [], text


def test_types_can_be_switched_off():
    only_email = PrivacyFilter(PrivacySettings(types=["EMAIL"]))
    spans = only_email.scan("a@b.org 4111 1111 1111 1111")
    assert [s.type for s in spans] == ["EMAIL"]


def test_names_are_reported_off_without_a_spacy_pipeline(privacy):
    assert privacy.names_status.startswith("off")
    assert not privacy.names_on
    assert PrivacyFilter(PrivacySettings(names="off")).names_status == "off (disabled by configuration)"


def test_names_with_a_spacy_pipeline(tmp_path):
    # A real spaCy pipeline (an entity ruler, since no statistical model is installed here),
    # saved to disk and loaded by path as an operator would name one.
    from traces.redaction.names import _import_spacy, torch_hidden

    spacy = _import_spacy()
    with torch_hidden():
        nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": [{"LOWER": "ada"}, {"LOWER": "lovelace"}]}])
    nlp.to_disk(tmp_path / "names")
    privacy = PrivacyFilter(PrivacySettings(names=str(tmp_path / "names")))
    assert privacy.names_on and privacy.names_status.startswith("on")
    [result] = privacy.redact_conversations([["I met Ada Lovelace today", "Ada Lovelace wrote to a@b.org"]])
    assert result.texts == ["I met <PERSON_1> today", "<PERSON_1> wrote to <EMAIL_1>"]


def test_checksums():
    assert ck.luhn_ok("4111111111111111") and not ck.luhn_ok("4111111111111112")
    assert ck.iban_ok("DE89370400440532013000") and not ck.iban_ok("DE89370400440532013001")
    assert ck.iban_ok("GB82WEST12345698765432")
    assert ck.es_dni_ok("12345678Z") and not ck.es_dni_ok("12345678A")
    assert ck.it_fiscal_code_ok("RSSMRA85T10A562S")
    assert ck.br_cpf_ok("52998224725") and not ck.br_cpf_ok("52998224724")
    assert ck.nl_bsn_ok("111222333") and not ck.nl_bsn_ok("111222334")
    assert ck.pl_pesel_ok("44051401359") and not ck.pl_pesel_ok("44051401358")
    assert ck.fr_nir_ok("255081416802538")
    assert ck.in_aadhaar_ok("234123412346") and not ck.in_aadhaar_ok("234123412347")
    assert ck.us_ssn_ok("123", "45", "6789") and not ck.us_ssn_ok("666", "45", "6789")


def _is_phone_by_parsing_every_region(candidate: str, regions: tuple[str, ...]) -> bool:
    """The phone test without shortcuts: libphonenumber parses the candidate for every region."""
    import phonenumbers

    from traces.redaction.detectors import _NANP_SHAPE, _NO_LEADING_ZERO

    text = "+" + candidate[2:] if candidate.startswith("00") else candidate
    try:
        if text.lstrip("(").startswith("+"):
            return phonenumbers.is_possible_number(phonenumbers.parse(text, None))
        if _NANP_SHAPE.fullmatch(text) and ("US" in regions or "CA" in regions):
            return True
        leading_zero = text.lstrip("( ").startswith("0")
        for region in regions:
            if leading_zero and region in _NO_LEADING_ZERO:
                continue
            if phonenumbers.is_valid_number_for_region(phonenumbers.parse(text, region), region):
                return True
        number = phonenumbers.parse(text, "US")
        return phonenumbers.is_possible_number(number) and len(str(number.national_number)) == 10 \
            and any(sep in candidate for sep in "-.() ")
    except phonenumbers.NumberParseException:
        return False


def test_phone_shortcuts_agree_with_libphonenumber(pii_corpus):
    # _is_phone rules regions out from libphonenumber's own metadata before parsing; the answer
    # must be the same as parsing for every region (this also catches a libphonenumber upgrade
    # that changes how it parses).
    import phonenumbers

    from traces.redaction import detectors as d

    candidates = {m.group() for row in pii_corpus[:1500] for m in d._NUMBER.finditer(row["text"])}
    rng = random.Random(11)
    codes = [str(code) for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE]
    for _ in range(1500):
        digits = rng.choice(["", "", "0", "00", "1", "011", "+", "(0", "90", rng.choice(codes), "+" + rng.choice(codes)])
        digits += "".join(rng.choice("0123456789") for _ in range(rng.randrange(6, 14)))
        candidates.add("".join(c + (rng.choice(" -./()") if rng.random() < 0.2 else "") for c in digits).strip(" -./("))
    regions_tried = [tuple(PrivacySettings().phone_regions), ("AR", "MX", "BR", "JP", "CA", "IT")]
    assert len(candidates) > 2000
    for regions in regions_tried:
        d.prepare_regions(regions)
        found = {c for c in candidates if d._is_phone.__wrapped__(c, regions)}
        assert len(found) > 300
        assert found == {c for c in candidates if _is_phone_by_parsing_every_region(c, regions)}


def test_loading_spacy_first_leaves_torch_usable_for_transformers():
    # A process that builds the privacy filter before it trains (a federated client) must still
    # find torch: spaCy's plugins import parts of transformers while torch is hidden.
    code = ("from traces.redaction.names import _import_spacy, torch_hidden\n"
            "spacy = _import_spacy()\n"
            "with torch_hidden():\n"
            "    spacy.blank('en')\n"
            "from transformers.utils import is_torch_available\n"
            "print(is_torch_available())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True"
