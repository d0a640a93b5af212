"""Turn per-agent room into a group placement: best agents first, or round-robin.

Everything here works on agents already sorted best first, so that "best first" inside
an attribute value and across values mean the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tessera.placement.types import FloatArray, IntArray

Limits = Sequence[tuple[IntArray, IntArray, bool]]
"""Per value limit: (value code of each ordered agent, remaining per value, one agent per value)."""
Fill = Callable[[IntArray, Limits, int, IntArray | None, Limits], IntArray]
"""(room per ordered agent, value limits, count, soft cap per agent or None, soft value
limits) -> tasks per agent."""


def water_fill(existing: IntArray, count: int, preference: FloatArray) -> IntArray:
    """Add `count` to the lowest entries first, ending as level as possible.

    When the level cannot be even, the extra units go to the entries with the highest
    `preference` (ties: lowest index).
    """
    add = np.zeros(len(existing), dtype=np.int64)
    if count <= 0 or len(existing) == 0:
        return add
    low, high = int(existing.min()), int(existing.min()) + count
    while low < high:  # the highest level reachable with `count` units
        middle = (low + high + 1) // 2
        if int(np.maximum(middle - existing, 0).sum()) <= count:
            low = middle
        else:
            high = middle - 1
    add = np.maximum(low - existing, 0)
    extra = count - int(add.sum())
    if extra:
        at_level = np.flatnonzero(existing <= low)
        best = at_level[np.argsort(-preference[at_level], kind="stable")[:extra]]
        add[best] += 1
    return add


def clip_to_limit(alloc: IntArray, codes: IntArray, remaining: IntArray, unique: bool) -> IntArray:
    """Keep each value within its remaining limit, earlier (better) agents served first."""
    limit: IntArray = np.append(remaining, 0)[codes]  # the appended 0 answers MISSING (-1)
    if unique:
        return np.minimum(alloc, limit)
    order = np.argsort(codes, kind="stable")
    grouped, sizes = codes[order], alloc[order]
    running = np.cumsum(sizes) - sizes
    starts = np.flatnonzero(np.concatenate(([True], grouped[1:] != grouped[:-1])))
    lengths = np.diff(np.append(starts, len(order)))
    before = running - np.repeat(running[starts], lengths)
    clipped = np.empty_like(alloc)
    clipped[order] = np.clip(limit[order] - before, 0, sizes)
    return clipped


def cut(alloc: IntArray, count: int) -> IntArray:
    """Take from the front until `count` tasks are placed."""
    before = np.cumsum(alloc) - alloc
    taken: IntArray = np.clip(count - before, 0, alloc)
    return taken


def _take_one_by_one(alloc: IntArray, grouped: Limits, count: int) -> IntArray:
    """Exact for several grouped limits: agent by agent, charging every limit as it goes."""
    left = [remaining.tolist() for _, remaining, _ in grouped]
    codes = [codes.tolist() for codes, _, _ in grouped]
    taken = np.zeros_like(alloc)
    for agent in np.flatnonzero(alloc).tolist():
        room = min(int(alloc[agent]), count, *(left[k][codes[k][agent]] for k in range(len(left))))
        if room > 0:
            taken[agent] = room
            count -= room
            for k in range(len(left)):
                left[k][codes[k][agent]] -= room
        if count == 0:
            break
    return taken


def take(alloc: IntArray, limits: Limits, count: int) -> IntArray:
    """Respect every value limit, then the count; charges what is taken to the limits.

    Limits with one agent per value are plain per-agent caps. One grouped limit is exact
    when vectorised; with several, clipping them one after another could hand a value's
    share to an agent another limit then refuses, so those go agent by agent.
    """
    grouped = [limit for limit in limits if not limit[2]]
    for codes, remaining, unique in limits:
        if unique:
            alloc = clip_to_limit(alloc, codes, remaining, unique)
    if len(grouped) > 1:
        alloc = _take_one_by_one(alloc, grouped, count)
    else:
        for codes, remaining, unique in grouped:
            alloc = clip_to_limit(alloc, codes, remaining, unique)
        alloc = cut(alloc, count)
    for codes, remaining, _ in limits:
        chosen = alloc > 0
        remaining -= np.bincount(
            codes[chosen], weights=alloc[chosen], minlength=len(remaining)
        ).astype(np.int64)
    return alloc


def fill_binpack(
    caps: IntArray,
    limits: Limits,
    count: int,
    soft: IntArray | None = None,
    soft_limits: Limits = (),
) -> IntArray:
    """Best agents first, each as full as it will go.

    With `soft` caps (per agent) or `soft_limits` (per value, e.g. per zone), a first pass
    fills within them and a second pass places the rest up to the hard caps and limits, so
    no task that fits is left out.
    """
    if soft is None and not soft_limits:
        return take(caps, limits, count)
    first_caps = caps if soft is None else np.minimum(caps, soft)
    first = take(first_caps, [*limits, *soft_limits], count)
    return first + take(caps - first, limits, count - int(first.sum()))


def fill_spread(
    caps: IntArray,
    limits: Limits,
    count: int,
    soft: IntArray | None = None,
    soft_limits: Limits = (),
) -> IntArray:
    """Round-robin: every agent gets an equal share per round, best agents take the rest."""
    alloc = np.zeros_like(caps)
    while count > 0:
        room = caps - alloc
        open_agents = int(np.count_nonzero(room))
        if open_agents == 0:
            break
        share = max(1, count // open_agents)
        step = take(np.minimum(room, share), limits, count)
        placed = int(step.sum())
        if placed == 0:
            break
        alloc += step
        count -= placed
    return alloc
