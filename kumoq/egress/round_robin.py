"""The LVS weighted round robin KumoMTA uses to pick an egress source from a pool.

Reference §1.6 step 6c; ``kumoq.egress.sources`` keeps one instance per scheduled queue.
Pure (L0): no asyncio, sockets, clocks or file IO.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Set
from typing import Final, final

from kumoq.config.egress import EgressPool
from kumoq.errors import ConfigError

__all__ = ["WeightedRoundRobin"]

_NO_EXCLUSION: Final[frozenset[str]] = frozenset()


@final
class WeightedRoundRobin:
    """LVS weighted round robin over ``(name, weight)`` entries; weight-0 entries never win.

    The classic algorithm: advance the index cyclically; whenever it wraps to 0,
    ``current_weight -= gcd`` and, once that is ``<= 0``, reset it to ``max_weight``; the entry
    at the index is chosen when ``weight >= current_weight``. Over ``k * sum(weights)`` picks
    from a fresh instance each entry is chosen exactly ``k * weight`` times.

    ``next(exclude)`` lets the caller skip sources that are full, suspended or throttled: the
    excluded entries are treated as weight 0 for that call only, and the state advances exactly
    as the algorithm would over the remaining entries. Levels at which no eligible entry can win
    are skipped arithmetically, so a call is O(len(entries)) whatever the weights.
    """

    __slots__ = ("_cw", "_gcd", "_index", "_max", "_names", "_weights")

    def __init__(self, entries: Iterable[tuple[str, int]]) -> None:
        pairs = list(entries)
        for name, weight in pairs:
            if weight < 0:
                raise ConfigError(f"weight for {name!r} must be at least 0, got {weight!r}")
        self._names: tuple[str, ...] = tuple(n for n, _ in pairs)
        self._weights: tuple[int, ...] = tuple(w for _, w in pairs)
        positive = [w for w in self._weights if w > 0]
        self._max = max(positive, default=0)
        self._gcd = math.gcd(*positive) if positive else 0
        # The index starts on the last entry so that the first step wraps to 0 (LVS's i = -1).
        self._index = len(pairs) - 1
        self._cw = 0

    @classmethod
    def from_pool(cls, pool: EgressPool) -> WeightedRoundRobin:
        return cls((e.name, e.weight) for e in pool.entries)

    @property
    def entries(self) -> tuple[tuple[str, int], ...]:
        """The ``(name, weight)`` entries, in pool order (compare to detect a pool change)."""
        return tuple(zip(self._names, self._weights, strict=True))

    def candidates(self) -> tuple[str, ...]:
        """The names that can ever be chosen (weight > 0), in pool order, without duplicates."""
        return tuple(
            dict.fromkeys(n for n, w in zip(self._names, self._weights, strict=True) if w > 0)
        )

    def next(self, exclude: Set[str] = _NO_EXCLUSION) -> str | None:
        """The next source, skipping ``exclude``; None when no entry with weight > 0 remains."""
        names = self._names
        weights = self._weights
        if exclude:
            top = max(
                (w for n, w in zip(names, weights, strict=True) if w > 0 and n not in exclude),
                default=0,
            )
        else:
            top = self._max
        if top == 0:
            return None
        n = len(names)
        cw = self._cw
        # The rest of the current pass at the current level.
        for i in range(self._index + 1, n):
            w = weights[i]
            if w and w >= cw and names[i] not in exclude:
                self._index = i
                return names[i]
        # Wrap: lower the level, resetting to max_weight; levels above the best eligible weight
        # would be passes in which nothing is chosen, so jump straight to it.
        cw -= self._gcd
        if cw <= 0:
            cw = self._max
        cw = min(cw, top)
        self._cw = cw
        for i in range(n):
            w = weights[i]
            if w and w >= cw and names[i] not in exclude:
                self._index = i
                return names[i]
        raise AssertionError("unreachable: an eligible entry has weight >= current_weight")

    def __repr__(self) -> str:
        return f"WeightedRoundRobin({list(self.entries)!r}, cw={self._cw}, index={self._index})"
