"""Check digits that separate real identifiers from random digit runs (plain functions, digits in)."""

from __future__ import annotations

# ISO 13616 IBAN lengths by country (the registry's list; a checksum alone passes 1 in 97 strings).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_ok(compact: str, strict_length: bool = True) -> bool:
    """`compact` is upper case without spaces; `strict_length` also checks the country's length."""
    if compact[:2] not in IBAN_LENGTHS or not compact[2:4].isdigit() or not 15 <= len(compact) <= 34:
        return False
    if strict_length and IBAN_LENGTHS[compact[:2]] != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


def iban_checks(compact: str) -> dict[int, bool]:
    """{length: does compact[:length] pass iban_ok(..., strict_length=False)} for 15..34, in one pass
    (the remainder mod 97 of each prefix is carried over, instead of one big integer per length)."""
    if compact[:2] not in IBAN_LENGTHS or not compact[2:4].isdigit():
        return {}
    head = "".join(str(int(c, 36)) for c in compact[:4])     # moved to the end by the check
    head_value, head_scale = int(head) % 97, 10 ** len(head) % 97
    results: dict[int, bool] = {}
    remainder = 0
    for length, char in enumerate(compact[4:34], start=5):
        try:
            value = int(char, 36)
        except ValueError:
            break
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
        if length >= 15:
            results[length] = (remainder * head_scale + head_value) % 97 == 1
    return results


def card_prefix_ok(digits: str) -> bool:
    """Issuer ranges of the major networks (Visa, Mastercard, Amex, Discover, JCB, Diners, Maestro, UnionPay)."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[:4] == "0604":
        return 12 <= n <= 19                                   # Maestro (UK range)
    if digits[0] == "4":
        return n in (13, 16, 19)                               # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16                                         # Mastercard
    if two in (34, 37):
        return n == 15                                         # Amex
    if two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305:
        return 14 <= n <= 19                                   # Diners
    if four == 6011 or two == 65 or 644 <= int(digits[:3]) <= 649:
        return 16 <= n <= 19                                   # Discover
    if two == 35 or (four in (2131, 1800) and n == 15):
        return 15 <= n <= 19                                   # JCB
    if two == 62:
        return 16 <= n <= 19                                   # UnionPay
    if two in (50, 56, 57, 58) or two in (63, 67) or digits[:2] == "60" or digits[:4] == "0604":
        return 12 <= n <= 19                                   # Maestro
    return False


def us_ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def nl_bsn_ok(digits: str) -> bool:
    """Dutch BSN, the "11-proef"."""
    if len(digits) != 9 or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1))) - int(digits[8])
    return total % 11 == 0


def br_cpf_ok(digits: str) -> bool:
    if len(digits) != 11 or len(set(digits)) == 1:
        return False
    for size in (9, 10):
        total = sum(int(d) * w for d, w in zip(digits[:size], range(size + 1, 1, -1)))
        check = (total * 10) % 11 % 10
        if check != int(digits[size]):
            return False
    return True


def pl_pesel_ok(digits: str) -> bool:
    if len(digits) != 11:
        return False
    weights = (1, 3, 7, 9, 1, 3, 7, 9, 1, 3)
    total = sum(int(d) * w for d, w in zip(digits, weights))
    return (10 - total % 10) % 10 == int(digits[10])


def fr_nir_ok(text: str) -> bool:
    """French social security number (NIR): 13 characters + a 2-digit key; Corsica uses 2A / 2B."""
    if len(text) != 15 or text[0] not in "12378":
        return False
    body = text[:13].upper().replace("2A", "19").replace("2B", "18")
    if not body.isdigit() or not text[13:].isdigit():
        return False
    return 97 - int(body) % 97 == int(text[13:])


def es_dni_ok(text: str) -> bool:
    """Spanish DNI (8 digits + letter) or NIE (X/Y/Z + 7 digits + letter)."""
    text = text.upper()
    head = {"X": "0", "Y": "1", "Z": "2"}.get(text[0], text[0]) + text[1:-1]
    if len(text) != 9 or not head.isdigit():
        return False
    return "TRWAGMYFPDXBNJZSQVHLCKE"[int(head) % 23] == text[-1]


_CF_ODD = {
    **dict(zip("0123456789", (1, 0, 5, 7, 9, 13, 15, 17, 19, 21))),
    **dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ",
               (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23))),
}


def it_fiscal_code_ok(text: str) -> bool:
    text = text.upper()
    if len(text) != 16:
        return False
    total = 0
    for position, char in enumerate(text[:15]):
        if position % 2 == 0:
            total += _CF_ODD[char]
        else:
            total += int(char) if char.isdigit() else ord(char) - 65
    return chr(65 + total % 26) == text[15]


_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def in_aadhaar_ok(digits: str) -> bool:
    """Indian Aadhaar: 12 digits, first not 0 or 1, Verhoeff check digit."""
    if len(digits) != 12 or digits[0] in "01":
        return False
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(char)]]
    return check == 0
