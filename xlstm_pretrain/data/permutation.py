"""Keyed pseudo-random permutations of ``range(n)`` evaluated one index at a time.

The sample order must be a pure function of (seed, epoch, index) and cost no memory: a shuffled index
array for SlimPajama (3e8 samples of 2048 tokens) would be GBs per rank. So the shuffle is a bijection
computed on demand: a 6-round Feistel network over the smallest even-bit-width domain >= n, with
"cycle walking" (apply again until the value lands in [0, n)), which restricts a bijection of the
larger domain to a bijection of [0, n). The domain is < 4n, so a lookup takes < 4 walks on average.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1
_ROUNDS = 6


def mix64(x: int) -> int:
    """SplitMix64's finaliser: a fast 64-bit avalanche hash (every input bit flips ~half the output)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def hash_ints(*values: int) -> int:
    """Order-sensitive 64-bit hash of non-negative integers (stable across processes and machines,
    unlike Python's ``hash``)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = mix64(h ^ mix64(v + 0x632BE59BD9B4E019))
    return h


class IndexPermutation:
    """A bijection of ``range(n)`` determined by ``key`` (a tuple of ints): ``perm(i)`` is the i-th
    element of the shuffled order. Different keys give independent-looking orders."""

    def __init__(self, n: int, *key: int):
        if n < 1:
            raise ValueError(f"cannot permute an empty range (n={n})")
        self.n = n
        bits = max((n - 1).bit_length(), 2)
        bits += bits % 2  # balanced halves
        self._half = bits // 2
        self._half_mask = (1 << self._half) - 1
        self._round_keys = [hash_ints(*key, r) for r in range(_ROUNDS)]

    def __len__(self) -> int:
        return self.n

    def __call__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for a permutation of {self.n}")
        x = i
        while True:  # cycle walking; terminates because the Feistel map is a bijection of the domain
            x = self._feistel(x)
            if x < self.n:
                return x

    def _feistel(self, x: int) -> int:
        left, right = x >> self._half, x & self._half_mask
        for k in self._round_keys:
            left, right = right, left ^ (mix64(right ^ k) & self._half_mask)
        return (left << self._half) | right
