"""libphonenumber's verdicts on plain digit strings, computed from its metadata without parse().

`phonenumbers.parse` costs about 30-60 us a call (normalising, extension and viability regexes,
object building), and a number written without a country code is tried against every configured
region: that made phone numbers half the privacy filter's time on PII-dense text. For a plain
candidate (ASCII digits with " -./()" between them, no extension, no letters) everything parse()
does is a function of the digits, so this module follows its steps on the digits alone, with
libphonenumber's own metadata:

  regional:      the region's country code at the start (kept or stripped by the same tests as
                 parse), then the trunk prefix / carrier code (kept only when the rest has a
                 possible length), then is_valid_number_for_region's test (general description,
                 then the type patterns with their possible lengths);
  international: "+", the country code (1-3 digits), the trunk prefix, then is_possible_number's
                 length test against the country's main region.

Anything it does not follow exactly (an international dialling prefix such as "00" or "011" in a
regional number, odd metadata) returns None and the caller asks libphonenumber itself.
tests/traces/test_traces_redaction.py compares the answers with parse() on thousands of
candidates and several region lists, so a libphonenumber upgrade that parses differently fails
there instead of silently changing what is redacted.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, region_code_for_country_code
from phonenumbers.phonemetadata import PhoneMetadata

_MIN_NSN, _MAX_NSN, _MAX_COUNTRY_CODE = 2, 17, 3             # as in phonenumberutil
POSSIBLE, LOCAL_ONLY, TOO_SHORT, TOO_LONG, INVALID_LENGTH = range(5)
_NOT_KEPT = (TOO_SHORT, LOCAL_ONLY, INVALID_LENGTH)            # a stripped prefix is put back then
RAISES = "raises"                                              # parse() would raise: not a number


class Desc(NamedTuple):
    lengths: tuple[int, ...]
    pattern: re.Pattern[str] | None


class Plan(NamedTuple):
    country_code: int
    idd: re.Pattern[str] | None
    national_prefix: re.Pattern[str] | None
    transform: str | None
    general: Desc
    local_lengths: frozenset[int]
    specials: tuple[Desc, ...]         # premium rate, toll free, shared cost, VoIP, personal, pager, UAN, voicemail
    fixed_line: Desc | None
    mobile: Desc | None
    same_mobile_and_fixed_line: bool


def _desc(desc) -> Desc | None:
    if desc is None:
        return None
    pattern = desc.national_number_pattern
    return Desc(tuple(desc.possible_length), re.compile(pattern) if pattern else None)


@lru_cache(maxsize=None)
def plan_for(country_code: int, region: str) -> Plan | None:
    meta = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if meta is None or meta.general_desc is None or not meta.general_desc.possible_length:
        return None
    specials = tuple(d for d in map(_desc, (meta.premium_rate, meta.toll_free, meta.shared_cost, meta.voip,
                                            meta.personal_number, meta.pager, meta.uan, meta.voicemail)) if d)
    return Plan(
        meta.country_code,
        re.compile(meta.international_prefix) if meta.international_prefix else None,
        re.compile(meta.national_prefix_for_parsing) if meta.national_prefix_for_parsing else None,
        meta.national_prefix_transform_rule or None,
        _desc(meta.general_desc),
        frozenset(meta.general_desc.possible_length_local_only or ()),
        specials, _desc(meta.fixed_line), _desc(meta.mobile), bool(meta.same_mobile_and_fixed_line_pattern),
    )


@lru_cache(maxsize=None)
def region_plan(region: str) -> Plan | None:
    meta = PhoneMetadata.metadata_for_region(region)
    return None if meta is None else plan_for(meta.country_code, region)


def _general_match(number: str, plan: Plan) -> bool:
    return plan.general.pattern is not None and plan.general.pattern.fullmatch(number) is not None


def _matches(number: str, desc: Desc | None) -> bool:
    if desc is None or desc.pattern is None:
        return False
    if desc.lengths and len(number) not in desc.lengths:
        return False
    return desc.pattern.fullmatch(number) is not None


def length_result(number: str, plan: Plan) -> int:
    """_test_number_length(number, metadata) for an unknown number type."""
    size, lengths = len(number), plan.general.lengths
    if size in plan.local_lengths:
        return LOCAL_ONLY
    if lengths[0] == size:
        return POSSIBLE
    if lengths[0] > size:
        return TOO_SHORT
    if lengths[-1] < size:
        return TOO_LONG
    return POSSIBLE if size in lengths[1:] else INVALID_LENGTH


def strip_national_prefix(number: str, plan: Plan) -> str | None:
    """_maybe_strip_national_prefix_carrier_code(number, metadata)[1]; None for metadata it
    would trip over."""
    if not number or plan.national_prefix is None:
        return number
    match = plan.national_prefix.match(number)
    if not match:
        return number
    viable = _general_match(number, plan)
    groups = match.groups()
    if not plan.transform or (groups and groups[-1] is None):
        stripped = number[match.end():]
    elif groups:
        stripped = plan.national_prefix.sub(plan.transform, number, count=1)
    else:
        return None
    return number if viable and not _general_match(stripped, plan) else stripped


def valid_national_number(number: str, plan: Plan) -> bool:
    """_number_type_helper(number, metadata) != UNKNOWN."""
    if not _matches(number, plan.general):
        return False
    if any(_matches(number, desc) for desc in plan.specials) or _matches(number, plan.fixed_line):
        return True
    return not plan.same_mobile_and_fixed_line and _matches(number, plan.mobile)


def regional_national_number(digits: str, region: str) -> str | None:
    """The national number parse(digits, region) ends with, RAISES when it raises, None when this
    module does not follow that case (an international dialling prefix, odd metadata)."""
    plan = region_plan(region)
    if plan is None or (plan.idd is not None and plan.idd.match(digits)):
        return None
    number, active = digits, plan
    code = str(plan.country_code)
    if digits.startswith(code):                  # the region's own country code, without a "+"
        potential = strip_national_prefix(digits[len(code):], plan)
        if potential is None:
            return None
        if (not _general_match(digits, plan) and _general_match(potential, plan)) \
                or length_result(digits, plan) == TOO_LONG:
            number = potential
            main = region_code_for_country_code(plan.country_code)
            if main != region:                   # e.g. CA: parse goes on with the US metadata
                active = plan_for(plan.country_code, main)
                if active is None:
                    return None
    if len(number) < _MIN_NSN:
        return RAISES
    potential = strip_national_prefix(number, active)
    if potential is None:
        return None
    if length_result(potential, active) not in _NOT_KEPT:
        number = potential
    return RAISES if len(number) > _MAX_NSN else number


def is_possible(number: str, country_code: int) -> bool | None:
    """is_possible_number for a national number of `country_code`."""
    if country_code not in COUNTRY_CODE_TO_REGION_CODE:
        return False
    plan = plan_for(country_code, region_code_for_country_code(country_code))
    return None if plan is None else length_result(number, plan) in (POSSIBLE, LOCAL_ONLY)


def is_possible_international(digits: str) -> bool | None:
    """is_possible_number(parse("+" + digits, None)); None: ask libphonenumber."""
    if len(digits) <= _MIN_NSN or digits[0] == "0":
        return False                             # too short after "+", or no country code
    for size in range(1, min(len(digits), _MAX_COUNTRY_CODE) + 1):
        country_code = int(digits[:size])
        if country_code in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return False                             # no country code parse() knows
    plan = plan_for(country_code, region_code_for_country_code(country_code))
    if plan is None:
        return None
    number = digits[size:]
    if len(number) < _MIN_NSN:
        return False
    potential = strip_national_prefix(number, plan)
    if potential is None:
        return None
    if length_result(potential, plan) not in _NOT_KEPT:
        number = potential
    if len(number) > _MAX_NSN:
        return False
    return is_possible(number, country_code)
