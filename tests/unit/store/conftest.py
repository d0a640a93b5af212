"""A real etcd node shared by the store tests; each test works under its own key prefix."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera.testing.etcd import MISSING_REASON, EtcdCluster, etcd_binary

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def etcd_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if etcd_binary() is None:
        pytest.skip(MISSING_REASON)
    with EtcdCluster(Path(tmp_path_factory.mktemp("etcd")), size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_prefix() -> str:
    """A fresh key prefix per test: a new, empty store on the shared node."""
    return f"/test{next(_prefixes)}"
