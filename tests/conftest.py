"""Shared fixtures: a small simulated scene and a STAC API serving it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sar2ndvi.synth.config import SceneConfig
from sar2ndvi.synth.scene import Scene, simulate
from sar2ndvi.synth.server import StacServer, serve_scene

#: Rows x cols of the test scene: small, and not square, so row/column mix-ups show.
TEST_SIZE = (160, 224)


@pytest.fixture(scope="session")
def scene_config() -> SceneConfig:
    return SceneConfig(seed=7, size=TEST_SIZE)


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory, scene_config: SceneConfig) -> Scene:
    """A simulated scene, written once per test session (per xdist worker)."""
    return simulate(scene_config, tmp_path_factory.mktemp("scene") / "scene", progress=False)


@pytest.fixture(scope="session")
def stac_api(scene: Scene) -> Iterator[StacServer]:
    """A real STAC API (rustac serve) on a free loopback port, serving `scene`."""
    with serve_scene(scene) as server:
        yield server
