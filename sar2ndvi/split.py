"""Spatially disjoint train / validation / test splits of a patch lattice.

Neighbouring pixels are alike, and overlapping patches share pixels, so a random split of
patches puts near copies of test pixels in the training set and overstates accuracy. Here
the scene is tiled into square blocks, each block gets one role at random (from a seed) so
that the roles' areas approach the requested fractions, and each role keeps a margin of
ceil(buffer / 2) px from every block of another role. Two patches of different roles are
then more than `buffer` px apart: their margins' squares cannot overlap. See
docs/patches.md for a picture.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from sar2ndvi.errors import InputError
from sar2ndvi.patches import PatchSpec, _shape2, patch_origins

__all__ = ["FORMAT", "ROLES", "Split", "load_split", "make_split", "min_block", "role_map"]

#: Role names, in code order (role codes 0, 1, 2).
ROLES: tuple[str, ...] = ("train", "val", "test")
#: The `format` field of a saved split.
FORMAT = "sar2ndvi-split/1"
#: role_map refuses scenes larger than this (it is for figures).
ROLE_MAP_MAX_PIXELS = 50_000_000


def _margin(buffer: int) -> int:
    """Pixels each role keeps from a block of another role."""
    return math.ceil(buffer / 2)


def min_block(spec: PatchSpec, buffer: int) -> int:
    """The smallest block (px, a multiple of the stride) that holds a patch of its role even
    when every neighbouring block has another role.

    Block edges lie on the stride lattice, so the first origin inside the margin m is
    ceil(m / stride) strides in, and the patch must end m px before the far edge.
    """
    s, m = spec.stride, _margin(buffer)
    need = math.ceil(m / s) * s + spec.size + m
    return math.ceil(need / s) * s


def _edges(length: int, block: int) -> np.ndarray:
    """Block edges along one axis: every `block` px, the last block taking the remainder."""
    n = max(1, length // block)
    edges = np.arange(n + 1, dtype=np.int64) * block
    edges[-1] = length
    return edges


@dataclass(frozen=True, eq=False)
class Split:
    """A spatially disjoint split: the inputs and the role of every block.

    Attributes:
        shape: (rows, cols) of the scene, px.
        spec: the patch lattice.
        fractions: requested area fractions of train, val, test.
        block: block side, px (the last row and column of blocks take the remainder).
        buffer: minimum gap, px, between patches of different roles.
        seed: seed of the role draw.
        roles: (block rows, block cols) int8 role codes (indices into `ROLES`).
    """

    shape: tuple[int, int]
    spec: PatchSpec
    fractions: tuple[float, float, float]
    block: int
    buffer: int
    seed: int
    roles: np.ndarray

    @property
    def margin(self) -> int:
        """Pixels each role's usable area keeps from blocks of another role."""
        return _margin(self.buffer)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Block edges (px) along y and x."""
        return _edges(self.shape[0], self.block), _edges(self.shape[1], self.block)

    def patches(self, role: str) -> np.ndarray:
        """(n, 2) origins (row, col) of the lattice patches of `role`, in lattice order.

        A patch belongs to a role when the patch grown by the margin on every side (clipped
        to the scene) lies in blocks of that role only.
        """
        code = _role_code(role)
        origins = patch_origins(self.shape, self.spec)
        if len(origins) == 0:
            return origins
        h, w = self.shape
        m, size = self.margin, self.spec.size
        ey, ex = self.edges()
        nby, nbx = self.roles.shape

        def block_index(p: np.ndarray, edges: np.ndarray, n: int) -> np.ndarray:
            return np.minimum(np.searchsorted(edges, p, side="right") - 1, n - 1)

        r, c = origins[:, 0], origins[:, 1]
        by0 = block_index(np.maximum(r - m, 0), ey, nby)
        by1 = block_index(np.minimum(r + size + m, h) - 1, ey, nby)
        bx0 = block_index(np.maximum(c - m, 0), ex, nbx)
        bx1 = block_index(np.minimum(c + size + m, w) - 1, ex, nbx)
        # integral image over blocks of this role: a patch is in when every block is
        mine = np.zeros((nby + 1, nbx + 1), dtype=np.int64)
        mine[1:, 1:] = (self.roles == code).cumsum(0).cumsum(1)
        count = mine[by1 + 1, bx1 + 1] - mine[by0, bx1 + 1] - mine[by1 + 1, bx0] + mine[by0, bx0]
        inside = count == (by1 - by0 + 1) * (bx1 - bx0 + 1)
        return origins[inside]

    def relattice(self, spec: PatchSpec, buffer: int | None = None) -> Split:
        """The same blocks and roles over another patch lattice (e.g. the landslide
        U-net's smaller patches on the NDVI model's split), with `buffer` px between roles
        (default: the new patch size).

        Raises:
            InputError: the blocks are not a multiple of the new stride, or too small.
        """
        buffer = spec.size if buffer is None else int(buffer)
        if self.block % spec.stride or self.block < min_block(spec, buffer):
            raise InputError(
                f"the split's {self.block}-px blocks do not fit {spec.size}-px patches with a "
                f"{spec.stride}-px stride and a {buffer}-px buffer (blocks must be multiples "
                f"of the stride and at least {min_block(spec, buffer)} px)"
            )
        return Split(self.shape, spec, self.fractions, self.block, buffer, self.seed, self.roles)

    def area_fractions(self) -> dict[str, float]:
        """The realised fraction of the scene's area in each role's blocks."""
        ey, ex = self.edges()
        area = np.diff(ey)[:, None] * np.diff(ex)[None, :]
        total = float(area.sum())
        return {name: float(area[self.roles == i].sum()) / total for i, name in enumerate(ROLES)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; `from_dict` restores the same split."""
        return {
            "format": FORMAT,
            "shape": [int(v) for v in self.shape],
            "patch": self.spec.to_dict(),
            "fractions": [float(f) for f in self.fractions],
            "block": int(self.block),
            "buffer": int(self.buffer),
            "seed": int(self.seed),
            "roles": [[ROLES[v] for v in row] for row in self.roles.tolist()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        """The split of `to_dict` (roles as stored: a saved split outlives algorithm changes)."""
        if data.get("format") != FORMAT:
            raise InputError(f"not a sar2ndvi split (format {data.get('format')!r}, want {FORMAT})")
        try:
            shape = _shape2(data["shape"])
            spec = PatchSpec.from_dict(data["patch"])
            fractions = _fractions(data["fractions"])
            block, buffer, seed = int(data["block"]), int(data["buffer"]), int(data["seed"])
            codes = [[ROLES.index(v) for v in row] for row in data["roles"]]
            roles = np.array(codes, dtype=np.int8)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed split description: {exc!r}") from exc
        expected = (len(_edges(shape[0], block)) - 1, len(_edges(shape[1], block)) - 1)
        if roles.shape != expected:
            raise InputError(
                f"malformed split description: roles are {roles.shape} blocks, a "
                f"{shape[0]} x {shape[1]} scene in {block}-px blocks has {expected}"
            )
        return cls(shape, spec, fractions, block, buffer, seed, roles)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Split) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the split as JSON, atomically (a temporary file renamed into place)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # mkstemp makes the file private (0600); give it the usual permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def load_split(path: str | os.PathLike) -> Split:
    """The split saved at `path` by `Split.save`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read a split ({exc})") from exc
    try:
        return Split.from_dict(data)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc


def _role_code(role: str) -> int:
    if role not in ROLES:
        raise InputError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return ROLES.index(role)


def _fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if (
        len(values) != 3
        or not all(math.isfinite(f) and f >= 0 for f in values)
        or abs(sum(values) - 1.0) > 1e-6
        or values[0] == 0
    ):
        raise InputError(
            f"fractions must be three non-negative numbers (train > 0, val, test) summing to "
            f"1, got {fractions!r}; e.g. (0.7, 0.15, 0.15)"
        )
    return values  # type: ignore[return-value]


def _blocks_in(shape: tuple[int, int], block: int) -> int:
    return (shape[0] // block) * (shape[1] // block)


def _too_small(shape: tuple[int, int], spec: PatchSpec, buffer: int, block: int, n: int) -> str:
    side = math.ceil(math.sqrt(n))
    rows = math.ceil(n / side)
    return (
        f"the {shape[0]} x {shape[1]} px scene is too small for a spatially disjoint split "
        f"into {n} roles of {spec.size}-px patches (stride {spec.stride}) with a {buffer}-px "
        f"buffer: it needs {n} blocks of at least {block} x {block} px, i.e. a scene of at "
        f"least {block} x {n * block} or {rows * block} x {side * block} px; use smaller "
        "patches, a smaller buffer, or fewer roles (a zero fraction)"
    )


def _default_block(
    shape: tuple[int, int], spec: PatchSpec, buffer: int, fractions: tuple[float, ...]
) -> int:
    """4 x the patch size (on the stride lattice), shrunk in strides until the scene has
    enough blocks for the smallest role's fraction, but not below `min_block`."""
    smallest = min(f for f in fractions if f > 0)
    active = sum(f > 0 for f in fractions)
    wanted = max(active, math.ceil(1.0 / smallest - 1e-9))
    lower = min_block(spec, buffer)
    block = max(lower, (4 * spec.size) // spec.stride * spec.stride)
    while block > lower and _blocks_in(shape, block) < wanted:
        block -= spec.stride
    return block


def _assign(areas: np.ndarray, fractions: tuple[float, ...], seed: int) -> np.ndarray:
    """Role codes of the blocks (flat): in a random order, the first blocks give each role
    with a positive fraction one block, then each block goes to the role furthest below
    its target area."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(areas))
    active = [i for i, f in enumerate(fractions) if f > 0]
    first = rng.permutation(active)
    target = np.asarray(fractions, dtype=np.float64) * float(areas.sum())
    assigned = np.zeros(len(fractions), dtype=np.float64)
    roles = np.full(len(areas), -1, dtype=np.int8)
    for k, b in enumerate(order):
        if k < len(first):
            role = int(first[k])
        else:
            deficit = np.where(np.asarray(fractions) > 0, target - assigned, -np.inf)
            role = int(np.argmax(deficit))
        roles[b] = role
        assigned[role] += areas[b]
    return roles


def make_split(
    shape: tuple[int, int],
    spec: PatchSpec,
    *,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    block: int | None = None,
    buffer: int | None = None,
    seed: int = 0,
) -> Split:
    """A spatially disjoint train / val / test split of the patch lattice of a scene.

    Args:
        shape: (rows, cols) of the scene, px.
        spec: the patch lattice.
        fractions: target area fractions of train, val and test (sum 1; val or test may be
            0 for no such role). Every role with a positive fraction gets at least one block.
        block: block side, px, a multiple of the stride and at least `min_block`; default
            4 x the patch size, shrunk (down to `min_block`) until the scene holds enough
            blocks for the smallest fraction (1 / fraction blocks).
        buffer: minimum gap, px, between patches of different roles (default: the patch
            size, one whole patch between them).
        seed: seed of the role draw: the same inputs give the same split.

    Raises:
        InputError: the scene holds fewer full blocks than roles (the message gives the
            smallest scene that works), or an argument is out of range.
    """
    shape = _shape2(shape)
    fracs = _fractions(fractions)
    buffer = spec.size if buffer is None else int(buffer)
    if buffer < 0:
        raise InputError(f"buffer must be >= 0 px, got {buffer}")
    lower = min_block(spec, buffer)
    active = sum(f > 0 for f in fracs)
    if block is None:
        block = _default_block(shape, spec, buffer, fracs)
    else:
        block = int(block)
        if block < lower or block % spec.stride:
            raise InputError(
                f"block must be a multiple of the stride ({spec.stride} px) and at least "
                f"{lower} px (a {spec.size}-px patch inside a {_margin(buffer)}-px margin on "
                f"each side), got {block}"
            )
    if _blocks_in(shape, block) < active:
        raise InputError(_too_small(shape, spec, buffer, max(block, lower), active))
    ey, ex = _edges(shape[0], block), _edges(shape[1], block)
    areas = (np.diff(ey)[:, None] * np.diff(ex)[None, :]).ravel()
    roles = _assign(areas, fracs, seed).reshape(len(ey) - 1, len(ex) - 1)
    return Split(shape, spec, fracs, block, buffer, int(seed), roles)


def role_map(split: Split, *, usable: bool = True) -> np.ndarray:
    """(y, x) int8 map of the split for figures: the role code of each pixel's block, and
    with `usable` -1 in the margins a role gives up next to another role. Small scenes only
    (it is a full-resolution array)."""
    h, w = split.shape
    if h * w > ROLE_MAP_MAX_PIXELS:
        raise InputError(
            f"role_map draws every pixel; the {h} x {w} px scene is too large "
            f"(limit {ROLE_MAP_MAX_PIXELS} px): use Split.roles, one value per block"
        )
    ey, ex = split.edges()
    rows = np.repeat(np.arange(len(ey) - 1), np.diff(ey))
    cols = np.repeat(np.arange(len(ex) - 1), np.diff(ex))
    out = split.roles[rows[:, None], cols[None, :]].astype(np.int8)
    if not usable or split.margin == 0:
        return out
    result = out.copy()
    window = 2 * split.margin + 1
    for code in range(len(ROLES)):
        other = ndimage.maximum_filter(out != code, size=window, mode="constant", cval=0)
        result[(out == code) & other] = -1
    return result
