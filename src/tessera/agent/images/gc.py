"""Which images the image GC removes: pure (no I/O, no clock; `now` is given).

The kubelet's policy with Nomad's delay: nothing happens below the high watermark; above
it, the least recently used images that no task pins and that nobody used for `delay`
seconds go, oldest first, until what their removal frees brings usage under the low
watermark. A layer is freed only when no remaining image and no protected set (pinned
tasks, pulls in flight) still needs it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    reference: str
    digest: str
    layers: tuple[str, ...]  # chain IDs
    last_used: float


@dataclass(frozen=True, slots=True)
class Watermarks:
    limit: int
    high: float = 0.85
    low: float = 0.80
    delay: float = 180.0


def plan_collection(
    images: Sequence[Candidate],
    layer_sizes: Mapping[str, int],
    *,
    usage: int,
    marks: Watermarks,
    pinned_digests: Collection[str],
    protected_layers: Collection[str],
    now: float,
) -> list[str]:
    """The references to remove, in the order they go."""
    if usage <= marks.high * marks.limit:
        return []
    to_free = usage - marks.low * marks.limit
    eligible = sorted(
        (
            image
            for image in images
            if image.digest not in pinned_digests and now - image.last_used >= marks.delay
        ),
        key=lambda image: image.last_used,
    )
    remaining = {image.reference: image for image in images}
    freed_layers: set[str] = set()
    freed = 0
    removed: list[str] = []
    for image in eligible:
        if freed >= to_free:
            break
        del remaining[image.reference]
        removed.append(image.reference)
        still_needed = set(protected_layers)
        for other in remaining.values():
            still_needed.update(other.layers)
        for layer in image.layers:
            if layer not in still_needed and layer not in freed_layers:
                freed_layers.add(layer)
                freed += layer_sizes.get(layer, 0)
    return removed
