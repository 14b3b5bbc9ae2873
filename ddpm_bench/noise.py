"""Counter-based Gaussian noise: the noise for a key such as (seed, image j, term k, draw d) is a pure
function of that key, on any device and for any batch composition, order or sharding.

Each key is hashed with the SplitMix64 finaliser (Steele et al. 2014) into a 64-bit stream id; element e
of the stream is the 53-bit uniform U = (b + 1/2) / 2^53 in (0, 1), b = mix(id + (e + 1) * golden) >> 11,
mapped to a standard normal by the inverse CDF, Phi^-1(U) = sqrt(2) erfinv(2U - 1), in float64.
2U - 1 = (2b + 1 - 2^53) / 2^53 is formed in integers, so it is exact and never reaches +-1 (the largest
b gives 8.29, not inf); erfinv agrees with `torch.special.ndtri` to 1e-15 and is the faster of the two
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math

import torch

from ddpm_bench.arguments import given, named
from ddpm_bench.errors import UserError

MAX_SEED = 2**63 - 1  # seeds key the noise as int64


def check_seed(seed: int, name: str | None = None) -> None:
    """A seed is an integer in 0..2**63-1 (a UserError naming the argument, or `name`, otherwise)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        what = f"{name} {seed}" if name else given("seed", seed)
        raise UserError(f"{what}: must be an integer in 0..2**63-1")


MAX_DRAWS = 10_000  # noise draws per image (and drawn terms of the importance-sampled bound)


def check_draws(draws: int) -> None:
    """A count of draws is an integer in 1..MAX_DRAWS (a UserError naming the argument otherwise)."""
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= MAX_DRAWS:
        raise UserError(f"{named('draws')} must lie in 1..{MAX_DRAWS}, got {draws!r}")


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


def mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (two's-complement wrap-around arithmetic)."""
    return mix64_(z.clone(), torch.empty_like(z))


def mix64_int(z: int) -> int:
    """Reference SplitMix64 finaliser on Python ints (for tests and for seeding)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def stream_ids(seed: int, keys: torch.Tensor) -> torch.Tensor:
    """(P,) int64 stream ids from a seed and (P, K) int64 keys: id = mix(... mix(mix(seed) ^ k0) ^ k1 ...)."""
    h = torch.full((keys.shape[0],), _signed(mix64_int(seed)), dtype=torch.int64, device=keys.device)
    for col in range(keys.shape[1]):
        h = mix64(h ^ keys[:, col].to(torch.int64))
    return h


def _xor_shr_(z: torch.Tensor, n: int, tmp: torch.Tensor) -> None:
    """z ^= z >>> n in place (logical shift), using `tmp` (same shape) as scratch."""
    torch.bitwise_right_shift(z, n, out=tmp)
    tmp.bitwise_and_((1 << (64 - n)) - 1)
    z.bitwise_xor_(tmp)


def mix64_(z: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """`mix64` in place: the same bits, without allocating a tensor per operation."""
    _xor_shr_(z, 30, tmp)
    z.mul_(_signed(_M1))
    _xor_shr_(z, 27, tmp)
    z.mul_(_signed(_M2))
    _xor_shr_(z, 31, tmp)
    return z


def bits_to_normal_(bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Phi^-1((b + 1/2) / 2^53) into float64 `out` for int64 `bits` b in 0..2^53-1 (overwritten)."""
    bits.mul_(2).add_(1 - (1 << 53))  # 2b + 1 - 2^53: odd, |.| < 2^53, so exact in float64
    out.copy_(bits)
    out.mul_(2.0**-53)  # 2U - 1 in (-1, 1)
    torch.erfinv(out, out=out)
    return out.mul_(math.sqrt(2.0))


# values per chunk of rows: large enough that torch runs each operation on both cores (its grain size is
# 32,768), small enough for the int64 scratch to stay in cache (benchmarks/RESULTS.md)
CHUNK_ELEMENTS = 1 << 17


def counter_normal(seed: int, keys: torch.Tensor, shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """Standard normal noise of shape (P, *shape), row p a pure function of (seed, keys[p]).

    `keys` is (P, K) int64 (for the bound: image index, term, draw). Computed in float64 in chunks of
    rows (in place; every element goes through the same operations as in the module
    docstring, so chunking changes no bit); cast to `dtype` at the end.
    """
    numel = 1
    for n in shape:
        numel *= n
    P = keys.shape[0]
    ids = stream_ids(seed, keys)  # (P,)
    counters = torch.arange(1, numel + 1, dtype=torch.int64, device=keys.device) * _signed(_GOLDEN)
    out = torch.empty(P, numel, dtype=torch.float64, device=keys.device)
    rows = P if keys.device.type != "cpu" else max(1, CHUNK_ELEMENTS // max(1, numel))
    for r in range(0, P, rows):
        z = ids[r:r + rows, None] + counters[None, :]
        tmp = torch.empty_like(z)
        mix64_(z, tmp)
        torch.bitwise_right_shift(z, 11, out=tmp)
        tmp.bitwise_and_((1 << 53) - 1)  # 53 random bits b
        bits_to_normal_(tmp, out[r:r + rows])
    return out.reshape(P, *shape).to(dtype)
