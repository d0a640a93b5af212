"""Imports point one way (DESIGN.md): the pure packages never touch asyncio, HTTP, a database
or the clock, and lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tessera"

PURE = ("model", "placement", "reconcile")
IMPURE_MODULES = {
    "asyncio", "httpx", "fastapi", "starlette", "uvicorn", "websockets", "sqlite3", "time",
    "socket", "subprocess", "aetcd", "threading", "concurrent",
}  # fmt: skip
# package -> tessera packages it may import (besides itself)
ALLOWED = {
    "model": set(),
    "placement": {"model"},
    "reconcile": {"model", "placement"},
    "store": {"model", "clock"},
    "security": {"model", "clock"},
    "master": {"model", "placement", "reconcile", "store", "security", "clock", "http_errors"},
    "agent": {"model", "store", "security", "clock", "http_errors"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_stay_pure(package: str) -> None:
    offenders = {
        f"{path.relative_to(SRC)} imports {name}"
        for path in _files(package)
        for name in _imports(path)
        if name.split(".")[0] in IMPURE_MODULES
    }
    assert not offenders, sorted(offenders)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    offenders = set()
    for path in _files(package):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "tessera" or len(parts) < 2 or parts[1] == package:
                continue
            if parts[1] not in ALLOWED[package]:
                offenders.add(f"{path.relative_to(SRC)} imports {name}")
    assert not offenders, sorted(offenders)
