from datetime import date

import pytest

from sar2ndvi.errors import InputError
from sar2ndvi.synth.config import SceneConfig, default_dem_path, parse_size


def test_default_dem_ships_with_the_package():
    path = default_dem_path()
    assert path.is_file()
    assert path.stat().st_size > 1_000_000


@pytest.mark.parametrize(
    ("text", "expected"), [("512", (512, 512)), ("256x384", (256, 384)), ("128,96", (128, 96))]
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1x2x3", "12.5"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(InputError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": (10, 512)}, "size"),
        ({"size": (512, 100_000)}, "size"),
        ({"terrain": "moon"}, "terrain"),
        ({"dem": "/no/such/dem.tif"}, "dem"),
        ({"pre_days": 0}, "pre_days"),
        ({"post_days": 5}, "pre_days/post_days"),
        ({"event_date": date(2014, 1, 1)}, "event_date"),
        ({"landslide_density": -1.0}, "landslide_density"),
        ({"resolution": 20.0}, "resolution"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(InputError, match=field.replace("/", ".")):
        SceneConfig(**kwargs)


def test_fingerprint_follows_every_field():
    base = SceneConfig()
    assert base.fingerprint() == SceneConfig().fingerprint()
    assert base.fingerprint() != SceneConfig(seed=1).fingerprint()
    assert base.fingerprint() != SceneConfig(size=(512, 256)).fingerprint()
    assert base.fingerprint() != SceneConfig(terrain="fractal").fingerprint()
    assert base.fingerprint() != SceneConfig(event_date=date(2024, 5, 1)).fingerprint()
