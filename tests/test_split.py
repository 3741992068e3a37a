"""Spatially disjoint splits: patches of different roles never come within `buffer` px."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from sar2ndvi.errors import InputError
from sar2ndvi.patches import PATCH_128, PatchSpec, patch_origins
from sar2ndvi.split import ROLES, Split, load_split, make_split, min_block, role_map

# coarse lattices, and fine ones (stride 1 and 4) where the lattice cannot hide a margin
# that is one pixel too thin
SPECS = [PatchSpec(32, 16), PatchSpec(48, 0), PatchSpec(40, 10), PATCH_128,
         PatchSpec(16, 15), PatchSpec(24, 20)]
FRACTIONS = [(0.7, 0.15, 0.15), (1 / 3, 1 / 3, 1 / 3), (0.8, 0.2, 0.0), (0.5, 0.25, 0.25)]


def coverage(origins: np.ndarray, size: int, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels covered by the size x size patches at `origins`."""
    d = np.zeros((shape[0] + 1, shape[1] + 1), dtype=np.int64)
    r, c = origins[:, 0], origins[:, 1]
    for dr, dc, v in ((0, 0, 1), (0, size, -1), (size, 0, -1), (size, size, 1)):
        np.add.at(d, (r + dr, c + dc), v)
    return d.cumsum(0).cumsum(1)[:-1, :-1] > 0


def within(mask: np.ndarray, distance: int) -> np.ndarray:
    """Pixels at most `distance` px (max of row and column offsets) from a True pixel."""
    return ndimage.maximum_filter(mask, size=2 * distance + 1, mode="constant", cval=False)


def patches_inside(mask: np.ndarray, spec: PatchSpec) -> set[tuple[int, int]]:
    """Lattice origins whose whole patch lies where `mask` is True."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    o, s = patch_origins(mask.shape, spec), spec.size
    r, c = o[:, 0], o[:, 1]
    n = integral[r + s, c + s] - integral[r, c + s] - integral[r + s, c] + integral[r, c]
    return set(map(tuple, o[n == s * s].tolist()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(60, 1100),
    w=st.integers(60, 1100),
    spec=st.sampled_from(SPECS),
    fractions=st.sampled_from(FRACTIONS),
    buffer_frac=st.one_of(st.none(), st.floats(0, 2)),
    seed=st.integers(0, 2**31),
)
def test_patches_of_different_roles_are_more_than_buffer_apart(
    h, w, spec, fractions, buffer_frac, seed
):
    buffer = None if buffer_frac is None else int(buffer_frac * spec.size)
    active = sum(f > 0 for f in fractions)
    smallest = min_block(spec, spec.size if buffer is None else buffer)
    if (h // smallest) * (w // smallest) < active:
        # refused exactly when even the smallest blocks are too few for the roles
        with pytest.raises(InputError, match=rf"{h} x {w} px .* {spec.size}-px patches"):
            make_split((h, w), spec, fractions=fractions, buffer=buffer, seed=seed)
        return
    split = make_split((h, w), spec, fractions=fractions, buffer=buffer, seed=seed)
    buffer = split.buffer
    assert buffer == (spec.size if buffer_frac is None else buffer)
    patches = {role: split.patches(role) for role in ROLES}
    lattice = {tuple(o) for o in patch_origins((h, w), spec)}
    for role, frac in zip(ROLES, fractions, strict=True):
        assert (len(patches[role]) > 0) == (frac > 0), role  # every role gets patches
        assert {tuple(o) for o in patches[role]} <= lattice
    # THE property: no pixel of one role's patches within `buffer` px of another role's
    covered = {role: coverage(patches[role], spec.size, (h, w)) for role in ROLES}
    for a, b in itertools.combinations(ROLES, 2):
        assert not (within(covered[a], buffer) & covered[b]).any(), (a, b)
    # the patches of a role are exactly the lattice patches inside its usable area
    usable = role_map(split)
    for code, role in enumerate(ROLES):
        assert set(map(tuple, patches[role].tolist())) == patches_inside(usable == code, spec)
    # the realised area fractions are within two blocks of the requested ones
    ey, ex = split.edges()
    largest = np.diff(ey).max() * np.diff(ex).max() / (h * w)
    for role, frac in zip(ROLES, fractions, strict=True):
        assert abs(split.area_fractions()[role] - frac) <= 2 * largest + 1e-9


def test_two_blocks_leave_a_buffer_wide_strip_between_them():
    spec = PatchSpec(64, 32)
    split = make_split((256, 512), spec, fractions=(0.5, 0.5, 0.0), buffer=64, seed=0)
    assert split.block == 256
    assert split.roles.shape == (1, 2)
    left, right = int(split.roles[0, 0]), int(split.roles[0, 1])
    assert {left, right} == {0, 1}
    rm = role_map(split)
    assert (rm[:, :224] == left).all()
    assert (rm[:, 224:288] == -1).all()  # 32 px margin on each side of the border
    assert (rm[:, 288:] == right).all()
    np.testing.assert_array_equal(role_map(split, usable=False)[:, 256:], right)
    cols = {ROLES[left]: range(0, 161, 32), ROLES[right]: range(288, 449, 32)}
    for role, expected in cols.items():
        assert sorted(set(split.patches(role)[:, 1])) == list(expected)
    assert len(split.patches("test")) == 0


def test_the_same_seed_gives_the_same_split_and_json(tmp_path):
    a = make_split((2048, 1536), PATCH_128, seed=5)
    b = make_split((2048, 1536), PATCH_128, seed=5)
    assert a == b
    assert json.dumps(a.to_dict()) == json.dumps(b.to_dict())
    for role in ROLES:
        np.testing.assert_array_equal(a.patches(role), b.patches(role))
    others = [make_split((2048, 1536), PATCH_128, seed=s).roles for s in range(6, 10)]
    assert any(not np.array_equal(a.roles, r) for r in others)
    path = a.save(tmp_path / "split.json")
    assert path.read_text() == b.save(tmp_path / "again.json").read_text()
    loaded = load_split(path)
    assert loaded == a
    np.testing.assert_array_equal(loaded.patches("val"), a.patches("val"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.json", "split.json"]  # atomic


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "split.json"
    path.write_text("old")
    make_split((1024, 1024), PATCH_128, seed=1).save(path)
    assert load_split(path) == make_split((1024, 1024), PATCH_128, seed=1)


def test_default_block_shrinks_for_small_scenes_and_fractions_hold_on_large_ones():
    small = make_split((1024, 1024), PATCH_128)
    assert small.block % PATCH_128.stride == 0
    assert min_block(PATCH_128, 128) <= small.block < 4 * 128
    assert small.roles.size >= 7  # 1 / 0.15 blocks for the smallest role
    large = make_split((4096, 4096), PATCH_128, seed=2)
    assert large.block == 512
    assert large.roles.size == 64
    for role, frac in zip(ROLES, (0.7, 0.15, 0.15), strict=True):
        assert abs(large.area_fractions()[role] - frac) <= 2 / 64


def test_a_scene_too_small_is_refused_with_the_size_it_needs():
    with pytest.raises(InputError, match=r"300 x 300 px.*128-px patches.*256 x 768"):
        make_split((300, 300), PATCH_128)
    # two roles fit where three do not
    split = make_split((300, 600), PATCH_128, fractions=(0.8, 0.2, 0.0))
    assert len(split.patches("train")) > 0
    assert len(split.patches("val")) > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fractions": (0.5, 0.5, 0.5)}, "summing to 1"),
        ({"fractions": (0.0, 0.5, 0.5)}, "train > 0"),
        ({"block": 100}, "multiple of the stride"),
        ({"block": 192}, "at least 256 px"),
        ({"buffer": -1}, "buffer"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(InputError, match=match):
        make_split((2048, 2048), PATCH_128, **kwargs)
    with pytest.raises(InputError, match="unknown role"):
        make_split((2048, 2048), PATCH_128).patches("training")


def test_malformed_split_files_are_refused(tmp_path):
    good = make_split((1024, 1024), PATCH_128).to_dict()
    bad_cases = {
        "format": {**good, "format": "other"},
        "roles shape": {**good, "roles": good["roles"][:-1]},
        "role name": {**good, "roles": [["train", "dev", "test"]] * len(good["roles"])},
        "missing": {k: v for k, v in good.items() if k != "block"},
    }
    for name, data in bad_cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=str(path.name)):
            load_split(path)
    with pytest.raises(InputError, match="cannot read"):
        load_split(tmp_path / "nothing.json")
    assert Split.from_dict(good) == make_split((1024, 1024), PATCH_128)


def test_role_map_refuses_huge_scenes():
    split = make_split((20000, 20000), PATCH_128)
    with pytest.raises(InputError, match="too large"):
        role_map(split)
    assert len(split.patches("train")) > len(split.patches("test")) > 0
