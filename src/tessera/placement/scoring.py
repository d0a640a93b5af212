"""Packing policy: agent scores, the balanced group fill and the order of requests.

NOTE FOR THE ENGINE (issue 3, part 2; measured in bench/RESULTS.md, "Placement"):
the contract functions below work as before, but the packing goal (within 5% of the
lower bound) is only reached when the engine also uses the two optional hooks:

1. `order_requests(..., counts=, free=, capacity=, max_per_agent=)`: pass each
   request's task count, the free/total rows of the agents that can take work, and the
   per-agent cap from UNIQUE / MAX_PER on hostname (else `counts`). The order is then
   a look-ahead packing, not a sort; without them it falls back to largest first.
2. `binpack_copy_limits(free, capacity, demand)`: a soft per-agent cap for the binpack
   group fill. Fill best agents first up to `min(caps, limits)`, then place what is
   left best agents first up to `caps` (the second pass keeps every task placeable):

       first = take(np.minimum(caps, limits), value_limits, count)
       alloc = first + take(caps - first, value_limits, count - int(first.sum()))

Columns of every matrix are (cpus, mem, disk, gpus). Every resource is checked for fit
by the engine; the scores weigh cpus and mem, the two every task asks for (Nomad's and
Kubernetes' packing scores do the same). Scores are row-wise: an agent's score depends
on its own row only, so the engine may cache them and rescore just the changed rows.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

PACKED = (0, 1)
"""Columns the scores and the balance rule weigh: cpus and mem."""
BALANCE_SLACK = 0.2
"""How far an agent's cpu and mem usage may drift apart (in fractions of the agent)
while the first fill pass keeps adding copies of one task; measured, see RESULTS.md."""
UNLIMITED_COPIES = 1 << 40
_EPSILON = 1e-9


def _fractions(values: FloatArray, capacity: FloatArray) -> FloatArray:
    """`values / capacity` on the packed columns; 0 where the agent has none of a resource."""
    cap = capacity[..., PACKED]
    has = cap > 0
    fractions: FloatArray = np.where(has, values[..., PACKED] / np.where(has, cap, 1.0), 0.0)
    return fractions


def _used_after(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Mean used fraction of cpus and mem after one more task, 0..1 (absent resources skipped)."""
    has = capacity[:, PACKED] > 0
    used = np.clip(1.0 - _fractions(free - demand, capacity), 0.0, 1.0) * has
    counted = has.sum(axis=1)
    mean: FloatArray = np.where(counted > 0, used.sum(axis=1) / np.maximum(counted, 1), 0.0)
    return mean


def binpack_scores(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Best fit: the fuller an agent is after the task (mean of cpus and mem), the higher.

    Measured against Nomad's BestFit-v3, Kubernetes' MostAllocated, L2-norm and
    Tetris dot-product scores: with one task at a time they all pack within a point of
    each other; the gains come from the fill and the order (see the module note).
    """
    return _used_after(free, capacity, demand)


def spread_scores(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Least allocated: the more room an agent keeps after the task, the higher."""
    room: FloatArray = 1.0 - _used_after(free, capacity, demand)
    return room


def binpack_copy_limits(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> IntArray:
    """Per agent, how many copies of the task keep its cpu and mem usage balanced.

    The largest n >= 1 such that after n copies the agent's used cpu fraction and used
    mem fraction differ by at most BALANCE_SLACK (or, when the agent is already further
    apart, the copies pull it back at most that far the other way). A group of
    memory-heavy copies filling an agent to the brim in mem strands its cpus; capping
    the first pass keeps room for complementary tasks. Unlimited where the task is as
    cpu-heavy as it is memory-heavy, or the agent lacks cpus or mem.
    """
    used = 1.0 - _fractions(free, capacity)
    step = _fractions(np.broadcast_to(demand, free.shape), capacity)
    gap = used[:, 0] - used[:, 1]
    drift = step[:, 0] - step[:, 1]
    has_both = (capacity[:, PACKED] > 0).all(axis=1)
    bound = np.where(drift > 0, BALANCE_SLACK - gap, -BALANCE_SLACK - gap)
    moving = has_both & (np.abs(drift) > _EPSILON)
    copies = np.floor(np.divide(bound, drift, out=np.zeros_like(gap), where=moving) + _EPSILON)
    copies = np.clip(copies, 1, UNLIMITED_COPIES)
    return np.where(moving, copies, UNLIMITED_COPIES).astype(np.int64)


def balanced_fill(caps: IntArray, limits: IntArray, count: int) -> IntArray:
    """The binpack group fill over agents sorted best first (the engine's two passes).

    First pass: each agent up to `min(caps, limits)`; second pass: whatever is left, each
    agent up to `caps`. Returns copies per agent; they sum to `min(count, caps.sum())`.
    """
    first = _front(np.minimum(caps, limits), count)
    return first + _front(caps - first, count - int(first.sum()))


def _front(room: IntArray, count: int) -> IntArray:
    """Take from the front of `room` until `count` are taken."""
    before = np.cumsum(room) - room
    taken: IntArray = np.clip(count - before, 0, room)
    return taken


def _copies_that_fit(free: FloatArray, demand: FloatArray) -> IntArray:
    asked = demand > 0
    if not asked.any():
        return np.full(free.shape[0], UNLIMITED_COPIES, dtype=np.int64)
    per_resource = np.floor(free[:, asked] / demand[asked] + _EPSILON)
    copies: IntArray = np.clip(per_resource.min(axis=1), 0, UNLIMITED_COPIES).astype(np.int64)
    return copies


def _largest_first(demands: FloatArray, total_capacity: FloatArray) -> NDArray[np.intp]:
    """Sum of the shares of the cluster a task takes, largest first; stable for ties."""
    safe = np.where(total_capacity > 0, total_capacity, 1.0)
    shares = np.where(total_capacity > 0, demands / safe, 0.0)
    return np.argsort(-shares.sum(axis=1), kind="stable").astype(np.intp)


def order_requests(
    demands: FloatArray,
    total_capacity: FloatArray,
    *,
    counts: IntArray | None = None,
    free: FloatArray | None = None,
    capacity: FloatArray | None = None,
    max_per_agent: IntArray | None = None,
) -> NDArray[np.intp]:
    """The order in which requests of equal rank are placed (a permutation of the rows).

    `demands` holds one task per request. With only the two positional arguments:
    largest first. With `counts` (tasks per request), `free` and `capacity` (rows of the
    agents that can take work) and optionally `max_per_agent` (UNIQUE / MAX_PER caps),
    the order comes from a look-ahead packing on a copy of those agents, the way the
    engine fills them: the fullest open agent picks the request whose copies that fit
    it align best with its free room (Tetris' alignment score, for a group), the
    request's copies are filled in as the engine would, and so on. Requests that must
    spread over several agents go first, ordered the same way among themselves.
    """
    n_requests = len(demands)
    fallback = _largest_first(demands, total_capacity)
    if n_requests <= 1 or counts is None or free is None or capacity is None or len(free) == 0:
        return fallback
    counts = np.asarray(counts, dtype=np.int64)
    per_agent = counts if max_per_agent is None else np.minimum(max_per_agent, counts)
    if (demands == demands[0]).all() and (per_agent == counts).all():
        return fallback  # interchangeable requests: any order packs the same
    agents = _LookAhead(free.astype(np.float64, copy=True), capacity, demands, counts, per_agent)
    spread = per_agent < counts
    first = agents.order(np.flatnonzero(spread))
    rest = agents.order(np.flatnonzero(~spread))
    return np.concatenate([first, rest]).astype(np.intp)


class _LookAhead:
    """A copy of the agents that the planned requests are placed on, as the engine would."""

    def __init__(
        self,
        free: FloatArray,
        capacity: FloatArray,
        demands: FloatArray,
        counts: IntArray,
        per_agent: IntArray,
    ) -> None:
        self.free = free
        self.capacity = capacity
        self.demands = demands
        self.counts = counts
        self.per_agent = per_agent
        self.closed = np.zeros(len(free), dtype=np.bool_)

    def order(self, pending: NDArray[np.intp]) -> NDArray[np.intp]:
        """Place `pending` request by request; returns them in the order placed."""
        chosen: list[int] = []
        waiting = np.ones(len(pending), dtype=np.bool_)
        while waiting.any():
            candidates = pending[waiting]
            agent = self._focus()
            pick = None if agent is None else self._best_for(agent, candidates)
            if pick is None and agent is not None:
                self.closed[agent] = True  # nothing pending fits it any more
                continue
            if pick is None:  # no agent takes any of them: keep them largest first
                rest = candidates[np.argsort(-self.demands[candidates].sum(axis=1), kind="stable")]
                chosen.extend(rest.tolist())
                break
            chosen.append(pick)
            waiting[np.flatnonzero(pending == pick)] = False
            self._place(pick)
        return np.array(chosen, dtype=np.intp)

    def _focus(self) -> int | None:
        """The fullest agent not yet closed (lowest row on ties)."""
        open_rows = np.flatnonzero(~self.closed)
        if len(open_rows) == 0:
            return None
        used = _used_after(
            self.free[open_rows], self.capacity[open_rows], np.zeros(self.free.shape[1])
        )
        return int(open_rows[int(np.argmax(used))])

    def _best_for(self, agent: int, candidates: NDArray[np.intp]) -> int | None:
        """The request whose copies fitting `agent` best align with its free room."""
        free, capacity = self.free[agent], self.capacity[agent]
        demands = self.demands[candidates]
        asked = demands > 0
        ratio = np.divide(free, demands, out=np.full(demands.shape, np.inf), where=asked)
        fit = np.floor(ratio.min(axis=1) + _EPSILON)
        fit = np.minimum(fit, self.per_agent[candidates])
        fits = fit >= 1
        if not fits.any():
            return None
        room = _fractions(free, capacity)
        size = _fractions(demands[fits], np.broadcast_to(capacity, demands[fits].shape))
        alignment = fit[fits] * (size * room).sum(axis=1)
        return int(candidates[fits][int(np.argmax(alignment))])

    def _place(self, request: int) -> None:
        demand = self.demands[request]
        fit = np.minimum(_copies_that_fit(self.free, demand), self.per_agent[request])
        rows = np.flatnonzero(fit > 0)
        if len(rows) == 0:
            return
        scores = binpack_scores(self.free[rows], self.capacity[rows], demand)
        rows = rows[np.argsort(-scores, kind="stable")]
        limits = binpack_copy_limits(self.free[rows], self.capacity[rows], demand)
        copies = balanced_fill(fit[rows], limits, int(self.counts[request]))
        self.free[rows] -= copies[:, None] * demand
