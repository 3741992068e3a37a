"""Paths and loaders the tests share (importable as `tests.support`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "stac"


def load_fixture(name: str) -> list[dict]:
    """The real Planetary Computer items of shared/fixtures/stac/<name>-pc.json."""
    path = FIXTURES / f"{name}-pc.json"
    if not path.exists():
        pytest.skip(f"real STAC fixtures not found at {path}")
    return list(json.loads(path.read_text()))
