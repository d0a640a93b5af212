"""Packing policy: agent scores, the balanced group fill and the order of requests.

NOTE FOR THE ENGINE (issue 3, part 2; measured in bench/RESULTS.md, "Placement").
The contract functions (`binpack_scores`, `spread_scores`, `order_requests`) keep their
signatures, but the packing goal (within 5% of the lower bound, never worse than FFD,
Nomad BestFit-v3 or Kubernetes MostAllocated) needs two hooks in the binpack path:

1. `plan_requests(demands, counts, free, capacity, max_per_agent)` instead of
   `order_requests` for a priority level: `counts` = tasks per request, `free` and
   `capacity` = `snapshot.free` / `snapshot.total` of the active agents, and
   `max_per_agent` = 1 under UNIQUE hostname, n under MAX_PER hostname:n, else count.
   It returns `PackingPlan(order, balanced, ...)`.
2. When `plan.balanced`, the binpack fill caps its first pass per agent with
   `binpack_copy_limits(free[rows], total[rows], demand)` (rows sorted best first) and
   places what is left in a second pass, so every task still gets placed:

       first = take(np.minimum(caps, limits), value_limits, count)
       alloc = first + take(caps - first, value_limits, count - int(first.sum()))

   (`balanced_fill` below is the same two passes without value limits.)

Columns of every matrix are (cpus, mem, disk, gpus). Every resource is checked for fit
by the engine; the scores weigh cpus and mem, the two every task asks for (Nomad's and
Kubernetes' packing scores do the same). Scores are row-wise: an agent's score depends
on its own row only, so the engine may cache them and rescore just the changed rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

PACKED = slice(0, 2)
"""Columns the scores and the balance rule weigh: cpus and mem."""
BALANCE_SLACK = 0.2
"""How far an agent's cpu and mem usage may drift apart (in fractions of the agent)
while the first fill pass keeps adding copies of one task; measured, see RESULTS.md."""
EXTRA_SLACKS = (0.1, 0.3)
"""The balanced fill's other slacks the look-ahead tries on small batches (measured on the
25% large tasks family: 0.3 wins on most seeds, 0.1 on a few; bench/RESULTS.md)."""
UNLIMITED_COPIES = 1 << 40
EXTRA_EFFORT_SIZE = 100_000
"""Up to this many requests x agents, `plan_requests` tries more strategies (and `place()`
a third spread plan): measured, new users' batches of 100-200 apps on 25-75 agents take
0.63 s (median; 1.5 s at most) instead of 0.24 s; 900 apps on 260 agents stay at 2 s."""
_EPSILON = 1e-9


def _fractions(values: FloatArray, capacity: FloatArray) -> FloatArray:
    """`values / capacity` on the packed columns; 0 where the agent has none of a resource."""
    part, cap = values[..., PACKED], capacity[..., PACKED]
    fractions: FloatArray = np.zeros(np.broadcast_shapes(part.shape, cap.shape))
    np.divide(part, cap, out=fractions, where=cap > 0)
    return fractions


def _used_after(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Used fractions of cpus and mem after one more task, 0..1; 0 where the agent has none.

    Called on every changed agent after every placement, so kept to few numpy calls.
    """
    cap = capacity[:, PACKED]
    used: FloatArray = np.zeros(cap.shape)
    np.divide(cap - free[:, PACKED] + demand[PACKED], cap, out=used, where=cap > 0)
    np.clip(used, 0.0, 1.0, out=used)
    return used


def binpack_scores(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Best fit: the fuller an agent is after the task (mean of cpus and mem), the higher.

    Measured against Nomad's BestFit-v3, Kubernetes' MostAllocated, L2-norm and
    Tetris dot-product scores: with one task at a time they all pack within a point of
    each other; the gains come from the fill and the order (see the module note).
    Resources an agent lacks are left out of its mean.
    """
    used = _used_after(free, capacity, demand)
    present = capacity[:, PACKED] > 0
    if present.all():
        mean: FloatArray = used.sum(axis=1) / used.shape[1]
        return mean
    counted = present.sum(axis=1)
    mean = np.zeros(len(used))
    np.divide(used.sum(axis=1), counted, out=mean, where=counted > 0)
    return mean


def even_scores(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """For a group that must spread (UNIQUE, a required port): agents already in use first,
    the emptiest of them first; empty agents last.

    Best fit would stack every such group on the same fullest agents, which then fill up
    with one-per-agent tasks while the others stay half empty, until a later group finds
    too few agents with room and opens new ones. Spreading them evenly over the agents in
    use keeps room for the next group on every agent. In 0..1 (in use: 0.5 and above).
    """
    used = _used_after(free, capacity, np.zeros_like(demand)).max(axis=1)
    in_use = (free[:, PACKED] < capacity[:, PACKED] - _EPSILON).any(axis=1)
    even: FloatArray = np.where(in_use, 1.0 - 0.5 * used, 0.0)
    return even


def spread_scores(free: FloatArray, capacity: FloatArray, demand: FloatArray) -> FloatArray:
    """Least allocated by the dominant resource: the lower an agent's fuller resource
    after the task, the higher.

    Measured against the mean of cpus and mem (Kubernetes' LeastAllocated) and Nomad's
    ScoreFitSpread: levelling the dominant resource leaves every agent within a fraction
    of a percent of the same utilisation (bench/RESULTS.md, "Spread").
    """
    room: FloatArray = 1.0 - _used_after(free, capacity, demand).max(axis=1)
    return room


def binpack_copy_limits(
    free: FloatArray, capacity: FloatArray, demand: FloatArray, slack: float | None = None
) -> IntArray:
    """Per agent, how many copies of the task keep its cpu and mem usage balanced.

    The largest n >= 1 such that after n copies the agent's used cpu fraction and used
    mem fraction differ by at most `slack` (default BALANCE_SLACK; or, when the agent is
    already further apart, the copies pull it back at most that far the other way). A group of
    memory-heavy copies filling an agent to the brim in mem strands its cpus; capping
    the first pass keeps room for complementary tasks. Unlimited where the task is as
    cpu-heavy as it is memory-heavy, or the agent lacks cpus or mem.
    """
    used = 1.0 - _fractions(free, capacity)
    step = _fractions(np.broadcast_to(demand, free.shape), capacity)
    gap = used[:, 0] - used[:, 1]
    drift = step[:, 0] - step[:, 1]
    has_both = (capacity[:, PACKED] > 0).all(axis=1)
    slack = BALANCE_SLACK if slack is None else slack
    bound = np.where(drift > 0, slack - gap, -slack - gap)
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


def _largest_dominant_first(demands: FloatArray, total_capacity: FloatArray) -> NDArray[np.intp]:
    """The largest share of the cluster in any one resource first; stable for ties."""
    safe = np.where(total_capacity > 0, total_capacity, 1.0)
    shares = np.where(total_capacity > 0, demands / safe, 0.0)
    return np.argsort(-shares.max(axis=1), kind="stable").astype(np.intp)


def order_requests(demands: FloatArray, total_capacity: FloatArray) -> NDArray[np.intp]:
    """The order of requests of equal rank when nothing but their demands is known.

    Largest share of the cluster first (the sum over resources), stable for ties. The
    engine gets a much better order from `plan_requests` when it can pass the agents.
    """
    return _largest_first(demands, total_capacity)


class Fit(StrEnum):
    """Which agents a binpack group fills first."""

    BEST = "best"
    """The fullest after the task (`binpack_scores`)."""
    EVEN = "even"
    """Groups that must spread: the emptiest agents in use (`even_scores`); others best."""
    FIRST = "first"
    """The lowest agent that fits (with a largest-first order: first-fit decreasing)."""


@dataclass(frozen=True)
class Exclusive:
    """Things one agent gives to one task only, such as a required host port.

    `claims[i]` lists the keys request i's every task holds; `taken[agent, key]` says the
    agent cannot give the key (already held, or never offered). Two tasks claiming one key
    never share an agent, whichever requests they belong to.
    """

    claims: tuple[NDArray[np.intp], ...]
    taken: NDArray[np.bool_]


@dataclass(frozen=True)
class PackingPlan:
    """How to place a batch of requests: their order, and whether the fill is balanced.

    `balanced`: fill with `binpack_copy_limits` as the first-pass cap (else each agent
    as full as it goes). `fit`: which agents each group fills first. `agents_used` and
    `strategy` describe the winning look-ahead.
    """

    order: NDArray[np.intp]
    balanced: bool
    strategy: str
    agents_used: int
    fit: Fit = Fit.BEST
    slack: float | None = None
    """The balanced fill's BALANCE_SLACK (None: the default)."""


def plan_requests(
    demands: FloatArray,
    counts: IntArray,
    free: FloatArray,
    capacity: FloatArray,
    max_per_agent: IntArray | None = None,
    exclusive: Exclusive | None = None,
    soft_per_agent: IntArray | None = None,
) -> PackingPlan:
    """Choose the order and the fill for a batch of binpack requests by trying them out.

    `demands` holds one task per request, `counts` its number of tasks, `free` and
    `capacity` the rows of the agents that can take work, `max_per_agent` the cap per
    agent from UNIQUE / MAX_PER on hostname, `exclusive` the required host ports and
    `soft_per_agent` a cap the first fill pass keeps (replica spreading's). Each strategy
    packs a copy of the agents the way the engine fills them (resources, those caps and
    ports only; dynamic ports are assumed plentiful); the one that uses the
    fewest agents (then leaves fewest tasks out) wins, earlier strategies on ties:

    - look-ahead, balanced fill: the fullest open agent picks the request whose copies
      that fit it align best with its free room (Tetris' alignment score, for a
      group); requests that must spread over several agents go first;
    - the same look-ahead with each agent filled as full as it goes;
    - largest first (by the sum of shares, then by the dominant share), each agent
      filled as full as it goes, best fit and first fit (first-fit decreasing for groups);
    - when some request must spread (fewer copies per agent than it has) and the batch
      is small (requests x agents <= EXTRA_EFFORT_SIZE), the two look-aheads again with
      those requests placed evenly (`Fit.EVEN`).

    The balanced fill wins on large mixed batches, where complementary tasks fill the
    room it leaves; the plain ones win on small batches of big tasks.
    """
    counts = np.asarray(counts, dtype=np.int64)
    per_agent = counts if max_per_agent is None else np.minimum(max_per_agent, counts)
    largest = _largest_first(demands, capacity.sum(axis=0))
    if len(demands) <= 1 or len(free) == 0:
        return PackingPlan(largest, False, "single", 0)
    if (demands == demands[0]).all() and (per_agent == counts).all():
        return PackingPlan(largest, False, "interchangeable", 0)  # any order packs the same
    plans: list[tuple[tuple[int, int], PackingPlan]] = []
    spread = per_agent < counts
    looks: list[tuple[Fit, float | None]] = [(Fit.BEST, BALANCE_SLACK), (Fit.BEST, None)]
    if len(demands) * len(free) <= EXTRA_EFFORT_SIZE:  # small batches gain most from more
        if spread.any():
            looks += [(Fit.EVEN, BALANCE_SLACK), (Fit.EVEN, None)]
        looks += [(Fit.BEST, slack) for slack in EXTRA_SLACKS]
    for fit, slack in looks:
        agents = _LookAhead(
            free, capacity, demands, counts, per_agent, slack is not None, exclusive
        )
        agents.fit, agents.slack, agents.soft = fit, slack, soft_per_agent
        first = agents.order(np.flatnonzero(spread))
        order = np.concatenate([first, agents.order(np.flatnonzero(~spread))])
        fill = "full" if slack is None else f"balanced {slack}"
        plan = PackingPlan(order.astype(np.intp), slack is not None, "", 0, fit, slack)
        plans.append((agents.outcome(), replace(plan, strategy=f"look-ahead, {fill}, {fit} fit")))
    dominant = _largest_dominant_first(demands, capacity.sum(axis=0))
    for fit in (Fit.BEST, Fit.FIRST):
        for name, order in (("largest first", largest), ("largest dominant share first", dominant)):
            agents = _LookAhead(free, capacity, demands, counts, per_agent, False, exclusive)
            agents.fit, agents.soft = fit, soft_per_agent
            agents.replay(order)
            plan = PackingPlan(order, False, f"{name}, full, {fit} fit", 0, fit)
            plans.append((agents.outcome(), plan))
    (used, _), best = min(plans, key=lambda entry: entry[0])
    return replace(best, agents_used=used)


class _LookAhead:
    """A copy of the agents that the planned requests are placed on, as the engine would."""

    def __init__(
        self,
        free: FloatArray,
        capacity: FloatArray,
        demands: FloatArray,
        counts: IntArray,
        per_agent: IntArray,
        balanced: bool,
        exclusive: Exclusive | None = None,
    ) -> None:
        self.free = free.astype(np.float64, copy=True)
        self.claims = exclusive.claims if exclusive is not None else ()
        self.taken = exclusive.taken.copy() if exclusive is not None else None
        if self.taken is not None:
            # claimed[request, key]: the request's tasks hold the key.
            self.claimed = np.zeros((len(demands), self.taken.shape[1]), dtype=np.bool_)
            for request, keys in enumerate(self.claims):
                self.claimed[request, keys] = True
        self.capacity = capacity
        self.demands = demands
        self.counts = counts
        self.per_agent = per_agent
        self.balanced = balanced
        self.closed = np.zeros(len(free), dtype=np.bool_)
        self.unplaced = 0
        self.fit = Fit.BEST
        self.slack: float | None = None
        self.soft: IntArray | None = None

    def replay(self, order: NDArray[np.intp]) -> None:
        for request in order.tolist():
            self._place(request)

    def outcome(self) -> tuple[int, int]:
        """(agents in use, tasks left out) after the requests placed so far."""
        in_use = int(np.any(self.free < self.capacity, axis=1).sum())
        return in_use, self.unplaced

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
        nothing = np.zeros(self.free.shape[1])
        used = binpack_scores(self.free[open_rows], self.capacity[open_rows], nothing)
        return int(open_rows[int(np.argmax(used))])

    def _best_for(self, agent: int, candidates: NDArray[np.intp]) -> int | None:
        """The request whose copies fitting `agent` best align with its free room."""
        free, capacity = self.free[agent], self.capacity[agent]
        demands = self.demands[candidates]
        asked = demands > 0
        ratio = np.divide(free, demands, out=np.full(demands.shape, np.inf), where=asked)
        fit = np.floor(ratio.min(axis=1) + _EPSILON)
        fit = np.minimum(fit, self.per_agent[candidates])
        if self.taken is not None:
            fit[(self.claimed[candidates] & self.taken[agent]).any(axis=1)] = 0
        fits = fit >= 1
        if not fits.any():
            return None
        room = _fractions(free, capacity)
        size = _fractions(demands[fits], np.broadcast_to(capacity, demands[fits].shape))
        alignment = fit[fits] * (size * room).sum(axis=1)
        return int(candidates[fits][int(np.argmax(alignment))])

    def _place(self, request: int) -> None:
        demand = self.demands[request]
        count = int(self.counts[request])
        fit = np.minimum(_copies_that_fit(self.free, demand), self.per_agent[request])
        taken = self.taken
        claims = self.claims[request] if taken is not None else ()
        if taken is not None and len(claims):
            fit[taken[:, claims].any(axis=1)] = 0
        rows = np.flatnonzero(fit > 0)
        if self.fit is not Fit.FIRST:  # first fit: rows stay lowest first
            even = self.fit is Fit.EVEN and self.per_agent[request] < count
            score = even_scores if even else binpack_scores
            scores = score(self.free[rows], self.capacity[rows], demand)
            rows = rows[np.argsort(-scores, kind="stable")]
        if self.balanced:
            limits = binpack_copy_limits(self.free[rows], self.capacity[rows], demand, self.slack)
        else:
            limits = fit[rows]
        if self.soft is not None:
            limits = np.minimum(limits, self.soft[request])
        copies = balanced_fill(fit[rows], limits, count)
        self.free[rows] -= copies[:, None] * demand
        if taken is not None and len(claims):
            taken[np.ix_(rows[copies > 0], claims)] = True
        self.unplaced += count - int(copies.sum())
