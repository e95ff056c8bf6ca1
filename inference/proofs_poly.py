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

    Lagrange in a few whole-array steps (the node builds one per chunk of every stored reply, so
    the count of numpy calls matters more than the O(k^2) work): with M = prod (X - x_i) and
    weights w_i = 1 / M'(x_i), the coefficients are c_j = sum_s m_{s+j+1} z_s where
    z_s = sum_i w_i y_i x_i^s. Every product of two field elements is < 2**32 and every sum of k of
    them < 2**63, so int64 arithmetic is exact."""
    xs = np.asarray(xs, dtype=np.int64) % PRIME
    ys = np.asarray(ys, dtype=np.int64) % PRIME
    k = xs.size
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    master = _poly_from_roots(xs)                                  # k + 1 coefficients, monic
    powers = _powers(xs, k)                                        # powers[i, s] = x_i ** s
    derivative = master[1:] * np.arange(1, k + 1) % PRIME
    weights = _inverse_table()[(powers @ derivative) % PRIME]      # distinct xs: M'(x_i) != 0
    z = (powers.T @ (ys * weights % PRIME)) % PRIME
    return np.correlate(master[1:], z, "full")[k - 1:] % PRIME


def _poly_from_roots(roots: np.ndarray) -> np.ndarray:
    """prod (X - r) mod PRIME, lowest degree first, by pairwise products of the factors (log2 k
    levels; each product is a batch of outer products summed along their anti-diagonals)."""
    k = roots.size
    n = 1 << max(0, (k - 1).bit_length())
    polys = np.zeros((n, 2), dtype=np.int64)
    polys[:, 0] = 1                                                # padding factors: the constant 1
    polys[:k, 0] = (-roots) % PRIME
    polys[:k, 1] = 1
    while polys.shape[0] > 1:
        a, b = polys[0::2], polys[1::2]
        pairs, length = a.shape
        padded = np.zeros((pairs, length, 2 * length), dtype=np.int64)
        np.multiply(a[:, :, None], b[:, None, :], out=padded[:, :, :length])
        # row i of the flattened, re-cut array is shifted right by i: column t sums a_i * b_(t-i)
        skewed = padded.reshape(pairs, -1)[:, : length * (2 * length - 1)].reshape(pairs, length, 2 * length - 1)
        polys = skewed.sum(axis=1) % PRIME
    return polys[0, : k + 1]


def _powers(xs: np.ndarray, k: int) -> np.ndarray:
    """[len(xs), k] matrix of xs ** s mod PRIME, s < k, by doubling the columns."""
    powers = np.empty((xs.size, k), dtype=np.int64)
    powers[:, 0] = 1
    width, step = 1, xs % PRIME                                    # step = xs ** width
    while width < k:
        end = min(2 * width, k)
        np.remainder(powers[:, : end - width] * step[:, None], PRIME, out=powers[:, width:end])
        width, step = end, step * step % PRIME
    return powers


def evaluate(coefficients: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The polynomial (lowest degree first) at each of `xs`, mod PRIME."""
    xs = np.asarray(xs, dtype=np.int64) % PRIME
    coefficients = np.asarray(coefficients, dtype=np.int64) % PRIME
    if coefficients.size == 0:
        return np.zeros(xs.shape, dtype=np.int64)
    return (_powers(xs.reshape(-1), coefficients.size) @ coefficients % PRIME).reshape(xs.shape)


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
