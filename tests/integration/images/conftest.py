"""Real registries on loopback for the image tests, one of each kind per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tessera.testing.registry import Registry, require_registry


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_registry()
    with Registry() as made:
        yield made


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    require_registry()
    with Registry(auth="basic") as made:
        yield made
