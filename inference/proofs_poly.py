"""The TOPLOC commitment of one chunk: k points (index -> bf16 bits) as a polynomial over GF(65497).

Numpy only (no torch), so a store or a verifier-side tool can decode proofs without a model.

A chunk's top-k flat indices `x` and the bf16 bit patterns `y` of their values become the unique
polynomial of degree < k through the points (x mod m, y) over the prime field GF(65497), where m is
the largest modulus <= 65497 that keeps the k indices distinct (the "injective modulus"; indices
can exceed the field). Stored as 2 bytes of m plus k coefficients of 2 bytes, big-endian, lowest
degree first: 258 bytes for k = 128, whatever the chunk size. A verifier evaluates the polynomial
at its own top-k indices: where they agree with the prover's it gets the prover's bf16 value back,
elsewhere a pseudo-random 16-bit pattern that almost never matches.

Follows PrimeIntellect's toploc (github.com/PrimeIntellect-ai/toploc, arXiv 2501.16007); this is a
numpy reimplementation, not their code.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np

PRIME = 65497            # the largest prime below 2**16 - 32: every finite bf16 pattern is < PRIME
MIN_MODULUS = 1 << 15    # toploc searches the injective modulus down to 2**15


class ProofFormatError(ValueError):
    """Bytes that are not a chunk commitment (wrong length, modulus out of range)."""


@lru_cache(maxsize=1)
def _inverse_table() -> np.ndarray:
    """a**-1 mod PRIME for every a (index 0 unused), by Fermat: a**(p-2), vectorized once (~2 ms)."""
    base = np.arange(PRIME, dtype=np.int64)
    result = np.ones(PRIME, dtype=np.int64)
    exponent = PRIME - 2
    while exponent:
        if exponent & 1:
            result = result * base % PRIME
        base = base * base % PRIME
        exponent >>= 1
    return result


def find_injective_modulus(indices: np.ndarray) -> int:
    """The largest m <= PRIME under which all `indices` stay distinct."""
    indices = np.asarray(indices, dtype=np.int64)
    for modulus in range(PRIME, MIN_MODULUS, -1):
        if np.unique(indices % modulus).size == indices.size:
            return modulus
    raise ProofFormatError("no injective modulus for these indices")  # needs > 2**15 colliding indices


def interpolate(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Coefficients (lowest degree first) of the polynomial of degree < len(xs) through (xs, ys) mod PRIME.

    Newton divided differences, then expansion to the monomial basis: O(k^2) in k vector steps."""
    xs = np.asarray(xs, dtype=np.int64) % PRIME
    coef = np.asarray(ys, dtype=np.int64) % PRIME
    k = xs.size
    inverse = _inverse_table()
    coef = coef.copy()
    for j in range(1, k):
        denominators = (xs[j:] - xs[: k - j]) % PRIME
        coef[j:] = (coef[j:] - coef[j - 1 : k - 1]) % PRIME * inverse[denominators] % PRIME
    # Horner in the Newton basis: poly = (...(c[k-1](X - x[k-2]) + c[k-2])(X - x[k-3]) ...) + c[0]
    poly = np.zeros(k, dtype=np.int64)
    poly[0] = coef[k - 1]
    for i in range(k - 2, -1, -1):
        shifted = np.empty_like(poly)
        shifted[0] = 0
        shifted[1:] = poly[:-1]
        poly = (shifted - xs[i] * poly) % PRIME
        poly[0] = (poly[0] + coef[i]) % PRIME
    return poly


def evaluate(coefficients: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The polynomial (lowest degree first) at each of `xs`, mod PRIME (Horner, vectorized over xs)."""
    xs = np.asarray(xs, dtype=np.int64) % PRIME
    acc = np.zeros(xs.shape, dtype=np.int64)
    for c in np.asarray(coefficients, dtype=np.int64)[::-1]:
        acc = (acc * xs + c) % PRIME
    return acc


def encode_chunk(indices: np.ndarray, bf16_bits: np.ndarray) -> bytes:
    """The commitment of one chunk: 2 + 2k bytes."""
    indices = np.asarray(indices, dtype=np.int64)
    bits = np.asarray(bf16_bits, dtype=np.int64)
    if indices.shape != bits.shape or indices.ndim != 1:
        raise ValueError("indices and bf16_bits must be 1-D and of equal length")
    if bits.size and (bits.min() < 0 or bits.max() >= PRIME):
        raise ValueError("bf16 pattern out of field range (a NaN in the hidden states?)")
    modulus = find_injective_modulus(indices)
    coefficients = interpolate(indices % modulus, bits)
    return struct.pack(f">H{coefficients.size}H", modulus, *coefficients.tolist())


def decode_chunk(blob: bytes) -> tuple[int, np.ndarray]:
    """(modulus, coefficients) of one commitment."""
    if len(blob) < 4 or len(blob) % 2:
        raise ProofFormatError(f"a chunk commitment has an even length >= 4, not {len(blob)}")
    values = np.frombuffer(blob, dtype=">u2").astype(np.int64)
    modulus, coefficients = int(values[0]), values[1:]
    if not MIN_MODULUS < modulus <= PRIME:
        raise ProofFormatError(f"modulus {modulus} out of range")
    if coefficients.max() >= PRIME:
        raise ProofFormatError("coefficient out of field range")
    return modulus, coefficients


def open_chunk(blob: bytes, indices: np.ndarray) -> np.ndarray:
    """The bf16 bit patterns the commitment assigns to `indices` (uint16; garbage where the
    prover's top-k did not contain the index)."""
    modulus, coefficients = decode_chunk(blob)
    values = evaluate(coefficients, np.asarray(indices, dtype=np.int64) % modulus)
    return values.astype(np.uint16)
