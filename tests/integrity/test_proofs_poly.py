"""The GF(65497) polynomial commitment of one chunk."""

from __future__ import annotations

import numpy as np
import pytest

from inference.proofs_poly import (
    PRIME,
    ProofFormatError,
    decode_chunk,
    encode_chunk,
    evaluate,
    find_injective_modulus,
    interpolate,
    open_chunk,
)


def test_interpolation_passes_through_every_point():
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 17, 128):
        xs = rng.choice(PRIME, size=k, replace=False)
        ys = rng.integers(0, PRIME, size=k)
        coefficients = interpolate(xs, ys)
        assert coefficients.size == k
        assert (evaluate(coefficients, xs) == ys).all()


def _reference_interpolation(xs: list[int], ys: list[int]) -> list[int]:
    """Lagrange with Python integers, one basis polynomial at a time (slow, obviously right)."""
    coefficients = [0] * len(xs)
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        basis, denominator = [1], 1
        for j, xj in enumerate(xs):
            if j != i:
                basis = [((basis[t - 1] if t else 0) - xj * (basis[t] if t < len(basis) else 0)) % PRIME
                         for t in range(len(basis) + 1)]
                denominator = denominator * (xi - xj) % PRIME
        scale = yi * pow(denominator, PRIME - 2, PRIME) % PRIME
        coefficients = [(c + scale * b) % PRIME for c, b in zip(coefficients, basis)]
    return coefficients


def test_interpolation_and_evaluation_match_python_integers():
    rng = np.random.default_rng(7)
    for k in (1, 2, 5, 64, 128, 129):
        xs = rng.choice(PRIME, size=k, replace=False)
        ys = rng.integers(0, PRIME, size=k)
        expected = _reference_interpolation([int(x) for x in xs], [int(y) for y in ys])
        assert interpolate(xs, ys).tolist() == expected
        points = rng.integers(0, 4_000_000, size=50)
        assert evaluate(np.array(expected), points).tolist() == [
            sum(c * pow(int(x), t, PRIME) for t, c in enumerate(expected)) % PRIME for x in points]


def test_known_polynomial():
    # 1 + 2x + 3x^2 + 4x^3 through four points gives back its coefficients
    xs = np.array([0, 1, 2, 5])
    ys = (1 + 2 * xs + 3 * xs**2 + 4 * xs**3) % PRIME
    assert interpolate(xs, ys).tolist() == [1, 2, 3, 4]


def test_injective_modulus_keeps_large_indices_distinct():
    rng = np.random.default_rng(1)
    indices = rng.choice(4_000_000, size=128, replace=False)
    modulus = find_injective_modulus(indices)
    assert 2**15 < modulus <= PRIME
    assert np.unique(indices % modulus).size == 128
    colliding = np.array([5, 5 + PRIME])          # equal mod PRIME: a smaller modulus is needed
    assert find_injective_modulus(colliding) < PRIME


def test_chunk_commitment_is_258_bytes_and_opens_to_the_committed_values():
    rng = np.random.default_rng(2)
    indices = rng.choice(32 * 576, size=128, replace=False)
    bits = rng.integers(0, 0x7F80, size=128)               # finite bf16 patterns
    blob = encode_chunk(indices, bits)
    assert len(blob) == 258
    assert (open_chunk(blob, indices) == bits).all()
    # anywhere else the commitment gives noise: sign+exponent almost never match
    others = np.setdiff1d(np.arange(32 * 576), indices)[:4000]
    noise = open_chunk(blob, others).astype(np.int64)
    assert np.mean((noise >> 7) == (bits[0] >> 7)) < 0.02


def test_malformed_commitments_are_refused():
    with pytest.raises(ProofFormatError):
        decode_chunk(b"\x01")
    with pytest.raises(ProofFormatError, match="modulus"):
        decode_chunk(b"\x00\x01" + b"\x00\x00" * 4)
    with pytest.raises(ProofFormatError):
        decode_chunk(b"\xff\xd9" + b"\xff\xff" * 4)
    with pytest.raises(ValueError, match="NaN"):
        encode_chunk(np.array([1, 2]), np.array([0x3F80, 0xFFFF]))
