"""The image store's records on disk: `images.json` (reference → what was pulled) and
`pins.json` (task → the image it runs), each replaced atomically as a whole."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tessera.agent.disk import write_atomic

_VERSION = 1


@dataclass(frozen=True, slots=True)
class LayerRecord:
    chain_id: str
    digest: str  # of the compressed blob
    media_type: str
    diff_id: str


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One cached reference. `credentials` holds the keyed hashes of credentials that the
    registry accepted for it; empty means it was pulled anonymously (public)."""

    reference: str
    digest: str
    config_digest: str
    config_size: int
    layers: tuple[LayerRecord, ...]
    config: Mapping[str, Any]
    size: int
    last_used: float
    pulled_at: float
    credentials: tuple[str, ...] = ()

    @property
    def chain_ids(self) -> tuple[str, ...]:
        return tuple(layer.chain_id for layer in self.layers)

    def used(self, now: float) -> ImageRecord:
        return replace(self, last_used=max(self.last_used, now))


@dataclass(frozen=True, slots=True)
class Pin:
    digest: str
    layers: tuple[str, ...]  # chain IDs: protected even when the tag moved on


def load_images(path: Path) -> dict[str, ImageRecord]:
    document = _load(path)
    images: dict[str, ImageRecord] = {}
    for reference, entry in document.get("images", {}).items():
        try:
            images[reference] = _image_from_json(reference, entry)
        except (KeyError, TypeError, ValueError):
            continue  # an entry we cannot read is as good as not cached: pulled again
    return images


def save_images(path: Path, images: Mapping[str, ImageRecord]) -> None:
    document = {
        "version": _VERSION,
        "images": {reference: _image_to_json(r) for reference, r in sorted(images.items())},
    }
    write_atomic(path, json.dumps(document, indent=1, sort_keys=True), mode=0o600)


def load_pins(path: Path) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for task_id, entry in _load(path).get("pins", {}).items():
        try:
            pins[task_id] = Pin(str(entry["digest"]), tuple(str(c) for c in entry["layers"]))
        except (KeyError, TypeError):
            continue
    return pins


def save_pins(path: Path, pins: Mapping[str, Pin]) -> None:
    document = {
        "version": _VERSION,
        "pins": {
            task_id: {"digest": pin.digest, "layers": list(pin.layers)}
            for task_id, pin in sorted(pins.items())
        },
    }
    write_atomic(path, json.dumps(document, indent=1, sort_keys=True), mode=0o600)


def _load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        # A torn or foreign file: start empty (the layers on disk are found again by GC).
        return {}
    return document if isinstance(document, dict) else {}


def _image_to_json(record: ImageRecord) -> dict[str, Any]:
    return {
        "digest": record.digest,
        "config_digest": record.config_digest,
        "config_size": record.config_size,
        "layers": [
            {
                "chain_id": layer.chain_id,
                "digest": layer.digest,
                "media_type": layer.media_type,
                "diff_id": layer.diff_id,
            }
            for layer in record.layers
        ],
        "config": dict(record.config),
        "size": record.size,
        "last_used": record.last_used,
        "pulled_at": record.pulled_at,
        "credentials": list(record.credentials),
    }


def _image_from_json(reference: str, entry: Mapping[str, Any]) -> ImageRecord:
    layers = tuple(
        LayerRecord(
            str(layer["chain_id"]),
            str(layer["digest"]),
            str(layer["media_type"]),
            str(layer["diff_id"]),
        )
        for layer in entry["layers"]
    )
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError("config")
    return ImageRecord(
        reference=reference,
        digest=str(entry["digest"]),
        config_digest=str(entry["config_digest"]),
        config_size=int(entry.get("config_size", 0)),
        layers=layers,
        config=config,
        size=int(entry["size"]),
        last_used=float(entry["last_used"]),
        pulled_at=float(entry.get("pulled_at", entry["last_used"])),
        credentials=tuple(str(c) for c in entry.get("credentials", ())),
    )
