"""Per-sample random numbers: a point's draws depend on (seed, its index, the draw's key) only.

Attacks with random parts (PGD's random start and restarts, noise, the spatial attack's random
samples) draw through a ``SampleRNG``. Its numbers come from a counter-based hash of the attack's
seed, the point's index in the data set being evaluated and the draw's key, not from a stream
shared by the batch: a point gets the same random start whether it is attacked alone, in a
batch of 50 or in one of 1000, so robust accuracy does not depend on the batch size advlab
measures for the machine. Evaluation code (``advlab.eval.robust_accuracy``) passes each
batch's positions in the whole set as ``index``; a direct ``attack(model, x, y)`` uses
``arange(B)``.

The hash is Wellons' ``lowbias32`` integer mixer applied twice per element, computed in int64
tensor arithmetic whose products stay below 2**63 in magnitude (no overflow on any device); 24
bits of each hash make a float32 uniform in (0, 1), and Box–Muller turns pairs of them into
normals.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32_(x: Tensor, m: int) -> Tensor:
    """``(x * m) mod 2**32``, in place, for int64 ``x`` in [0, 2**32) and ``m`` in [0, 2**32),
    without int64 overflow: ``m`` at or above 2**31 is replaced by ``m - 2**32`` (the same
    residue), so |x·m| < 2**63, and the mask of a negative two's-complement product keeps its
    correct low 32 bits. Two passes over ``x``."""
    return x.mul_(m - (1 << 32) if m >= 1 << 31 else m).bitwise_and_(_M32)


def _mix(x: Tensor) -> Tensor:
    """Wellons' lowbias32: a bijection of [0, 2**32) with good avalanche (``x`` is left as it
    is; the result is updated in place, ten passes over it)."""
    x = x ^ (x >> 16)
    _mul32_(x, 0x7FEB352D)
    x.bitwise_xor_(x >> 15)
    _mul32_(x, 0x846CA68B)
    return x.bitwise_xor_(x >> 16)


def _check_key(key: int) -> int:
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise ValueError(f"expected a draw key that is an integer >= 0, got {key!r}")
    return key & _M32


class SampleRNG:
    """Random numbers for a batch whose points have the global positions ``index`` (B,).

    ``rand(shape, key)`` / ``randn(shape, key)`` give (B, ...) tensors whose row i depends only
    on (seed, index[i], key): the same key gives the same numbers again, another key
    independent ones. ``take(rows)`` is the generator of a subset of the batch (its points
    keep their own numbers). ``generator`` is a plain ``torch.Generator`` seeded with ``seed``
    for draws that need not be per point.
    """

    def __init__(self, seed: int, index: Tensor) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"expected an integer seed >= 0, got {seed!r}")
        if not isinstance(index, Tensor) or index.dim() != 1 or index.is_floating_point() \
                or index.is_complex() or index.dtype == torch.bool:
            what = (f"{index.dtype} {tuple(index.shape)}" if isinstance(index, Tensor)
                    else type(index).__name__)
            raise ValueError(f"expected index to be an integer tensor of shape (B,), got {what}")
        if index.numel() and int(index.min()) < 0:
            raise ValueError(f"expected index values >= 0 (positions in the data set), got "
                             f"{int(index.min())}")
        self.seed = seed
        self.index = index.to(torch.int64)
        self._generator: torch.Generator | None = None
        dev = self.index.device
        h = torch.tensor(0x9E3779B9, dtype=torch.int64, device=dev)
        while True:  # every 32-bit word of the seed (seeds >= 2**32 do not collide)
            h = _mix(h ^ torch.tensor(seed & _M32, dtype=torch.int64, device=dev))
            seed >>= 32
            if seed <= 0:
                break
        self._seed_hash = h

    @property
    def device(self) -> torch.device:
        return self.index.device

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self.seed)
        return self._generator

    def take(self, rows: Tensor) -> SampleRNG:
        """The generator of the points ``rows`` (indices or a bool mask) of this batch."""
        sub = SampleRNG.__new__(SampleRNG)
        sub.seed, sub.index, sub._generator = self.seed, self.index[rows], None
        sub._seed_hash = self._seed_hash
        return sub

    def _bits(self, n: int, key: int) -> Tensor:
        """(B, n) int64 hashes in [0, 2**32) of (seed, index, key, element)."""
        k = _check_key(key)
        a = _mix((self.index & _M32) ^ _mix(self._seed_hash ^ k))  # (B,)
        b = _mix(a ^ 0x85EBCA6B)  # (B,): a second, unrelated per-point word
        j = torch.arange(n, dtype=torch.int64, device=self.device)
        return _mix(_mix(j[None] ^ a[:, None]) ^ b[:, None])

    def _check_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] != self.index.numel():
            raise ValueError(f"expected a shape (B, ...) with B = {self.index.numel()} "
                             f"(the points of this generator), got {shape}")
        return shape

    def rand(self, shape: tuple[int, ...], key: int = 0,
             dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform numbers in (0, 1) of ``shape`` (B, ...)."""
        shape = self._check_shape(shape)
        per_point = math.prod(shape[1:])
        u = ((self._bits(per_point, key) >> 8).to(torch.float32) + 0.5) * 2.0 ** -24
        return u.reshape(shape).to(dtype)

    def randn(self, shape: tuple[int, ...], key: int = 0,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal numbers of ``shape`` (B, ...) (Box–Muller)."""
        shape = self._check_shape(shape)
        per_point = math.prod(shape[1:])
        bits = self._bits(2 * per_point, key)
        u = ((bits >> 8).to(torch.float32) + 0.5) * 2.0 ** -24  # (B, 2n) in (0, 1)
        u1, u2 = u[:, :per_point], u[:, per_point:]
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return z.reshape(shape).to(dtype)


def content_keys(x: Tensor) -> Tensor:
    """(B,) int64 keys in [0, 2**32) from the float32 bits of each row of ``x`` (B, ...): the
    same input gives the same key in any batch, so a randomized computation keyed by it (a
    projection's random restarts) is a deterministic function of each input."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    bits = x.detach().to(torch.float32).contiguous().reshape(x.shape[0], -1)
    bits = bits.view(torch.int32).to(torch.int64) & _M32  # (B, D)
    j = torch.arange(bits.shape[1], dtype=torch.int64, device=x.device)
    h = _mix(bits ^ _mix(j ^ 0x27D4EB2F)[None])  # (B, D): each pixel hashed with its position
    return _mix(h.sum(dim=1) & _M32)
