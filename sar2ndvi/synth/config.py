"""What a simulation is made of: one frozen, hashable description of a scene."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path

from sar2ndvi.errors import InputError

#: The DEM that ships with the package: SRTM 30 m of the Big Tujunga area (San Gabriel
#: Mountains, California), public domain. See sar2ndvi/synth/data/NOTICE.md.
DEFAULT_DEM = "bigtujunga-srtm30.tif"

MIN_SIZE = 64
MAX_SIZE = 8192


def default_dem_path() -> Path:
    """Path of the DEM GeoTIFF shipped inside the package."""
    return Path(str(resources.files("sar2ndvi.synth").joinpath("data", DEFAULT_DEM)))


@dataclass(frozen=True)
class SceneConfig:
    """Everything that determines a simulated scene; the same config gives the same bytes.

    Attributes:
        seed: seed of every random draw.
        size: (rows, cols) of the 10 m analysis grid, each in [64, 8192].
        terrain: "dem" (a DEM GeoTIFF, `dem`) or "fractal" (seeded synthetic mountains).
        dem: path of the DEM GeoTIFF; None means the packaged Big Tujunga SRTM DEM.
        event_date: the earthquake's date (UTC); it happens at 00:00 that day.
        pre_days: length of the pre-event acquisition window, days before the event.
        post_days: length of the post-event acquisition window, days after the event.
        s1_repeat_days: revisit of one Sentinel-1 orbit track (12 days with S1A alone).
        s2_revisit_days: Sentinel-2 revisit with both platforms (5 days).
        landslide_density: landslides per km^2 near the epicentre scale (see landslides.py).
        disturbance_density: clear-cuts and cleared fields per km^2 after the event, the
            vegetation loss that is not a landslide (see disturbance.py).
        resolution: pixel size of the analysis grid in metres.
    """

    seed: int = 0
    size: tuple[int, int] = (512, 512)
    terrain: str = "dem"
    dem: str | None = None
    event_date: date = date(2024, 4, 3)
    pre_days: int = 36
    post_days: int = 36
    s1_repeat_days: int = 12
    s2_revisit_days: int = 5
    landslide_density: float = 4.0
    disturbance_density: float = 1.0
    resolution: float = 10.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first field that makes no sense."""
        rows, cols = self.size
        for name, value in (("rows", rows), ("cols", cols)):
            if not MIN_SIZE <= value <= MAX_SIZE:
                raise InputError(
                    f"size: {name} = {value} is out of range; use {MIN_SIZE}..{MAX_SIZE} pixels "
                    f"(10 m each), e.g. --size 512 or --size 512x768"
                )
        if self.terrain not in ("dem", "fractal"):
            raise InputError(f"terrain: {self.terrain!r} is not 'dem' or 'fractal'")
        if self.terrain == "fractal" and self.dem is not None:
            raise InputError(
                "dem: a DEM path was given with terrain='fractal'; give one or the other"
            )
        if self.dem is not None and not Path(self.dem).is_file():
            raise InputError(f"dem: {self.dem} does not exist or is not a file")
        for name in ("pre_days", "post_days"):
            days = getattr(self, name)
            if not 1 <= days <= 366:
                raise InputError(f"{name}: {days} days makes no sense; use 1..366")
        if self.pre_days < self.s1_repeat_days or self.post_days < self.s1_repeat_days:
            raise InputError(
                f"pre_days/post_days ({self.pre_days}/{self.post_days}) must be at least one "
                f"Sentinel-1 repeat ({self.s1_repeat_days} days), or a window holds no radar scene"
            )
        if not 1 <= self.s1_repeat_days <= 24 or not 1 <= self.s2_revisit_days <= 20:
            raise InputError("s1_repeat_days must be in 1..24 and s2_revisit_days in 1..20")
        if (
            not date(2015, 6, 23) + timedelta(days=self.pre_days)
            <= self.event_date
            <= date(2100, 1, 1)
        ):
            raise InputError(
                f"event_date: {self.event_date} is outside the Sentinel era plus the pre-event "
                "window (Sentinel-2A launched 2015-06-23)"
            )
        if not 0.0 <= self.landslide_density <= 100.0:
            raise InputError(
                f"landslide_density: {self.landslide_density} per km^2 is not in 0..100"
            )
        if not 0.0 <= self.disturbance_density <= 20.0:
            raise InputError(
                f"disturbance_density: {self.disturbance_density} per km^2 is not in 0..20"
            )
        if self.resolution != 10.0:
            raise InputError("resolution: only the Sentinel 10 m grid is supported")

    @property
    def dem_path(self) -> Path | None:
        """The DEM to read, or None for fractal terrain."""
        if self.terrain == "fractal":
            return None
        return Path(self.dem) if self.dem is not None else default_dem_path()

    @property
    def event_datetime(self) -> datetime:
        """The event time, midnight UTC of `event_date`, as a naive UTC datetime."""
        return datetime(self.event_date.year, self.event_date.month, self.event_date.day)

    def to_dict(self) -> dict:
        """A JSON-able description; the DEM is identified by its content hash, not its path."""
        out = asdict(self)
        out["size"] = list(self.size)
        out["event_date"] = self.event_date.isoformat()
        dem = self.dem_path
        out["dem"] = None if dem is None else dem.name
        out["dem_sha256"] = None if dem is None else hashlib.sha256(dem.read_bytes()).hexdigest()
        return out

    def fingerprint(self) -> str:
        """A short hash of `to_dict()`: configs with one fingerprint give the same scene."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_size(text: str) -> tuple[int, int]:
    """Parse `512` or `512x768` (rows x cols) into a (rows, cols) tuple."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"size: {text!r} is not N or ROWSxCOLS, e.g. 512 or 512x768") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2:
        raise InputError(f"size: {text!r} is not N or ROWSxCOLS, e.g. 512 or 512x768")
    return (values[0], values[1])
