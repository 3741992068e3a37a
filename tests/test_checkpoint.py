"""Checkpoints: exact round trips, safe loading, clear errors, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sar2ndvi
from sar2ndvi.checkpoint import (
    BEST,
    FORMAT,
    FORMAT_VERSION,
    LAST,
    Checkpoint,
    CheckpointWriteError,
    export_safetensors,
    load_checkpoint,
    resolve,
    save_checkpoint,
    weights_digest,
)
from sar2ndvi.errors import InputError, Sar2ndviError
from sar2ndvi.features import FeatureSpec
from sar2ndvi.model import UNet, UNetConfig

CONFIG = UNetConfig(width=4, depth=2, dropout=0.2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add contention (and spin-waits on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def metadata() -> dict:
    """What a training run records: feature recipe, normalisation, patches, and extras."""
    return {
        "features": FeatureSpec().to_dict(),
        "normalisation": {
            "band": ["vv", "vh", "vv_mean", "vv_std", "vh_mean", "vh_std", "sin_aspect",
                     "cos_aspect", "sin_slope"],
            # float32 statistics widened to Python floats: all 17 significant digits kept
            "center": [float(np.float32(v)) for v in (-11.3, -18.7, -11.3, 2.1, -18.7, 1.9,
                                                      0.01, -0.02, 0.4)],
            "scale": [3.3, 3.1, 2.2, 0.7, 2.0, 0.6, 0.7, 0.7, 0.2],
        },
        "patch": {"size": 128, "overlap": 64},
        "cube": "hualien-2024",
        "notes": "Taroko \u2013 太魯閣 \u00e9\n\"quoted\"",
        "tiny": 1e-300,
        "big_int": 2**70,
        "flags": [True, False, None],
        "empty": {"list": [], "dict": {}},
    }


def trained_model(steps: int = 3) -> UNet:
    """A small U-net after a few AdamW steps, so BN running stats are not the defaults."""
    torch.manual_seed(0)
    model = UNet(CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(2, 9, 8, 8)
        loss = (model(x) - 0.3).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def same(a, b) -> bool:
    """Deep equality with exact types; tensors compared with torch.equal (and dtype)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


# --- round trips -------------------------------------------------------------------------


def test_reloaded_model_predicts_the_same_bytes(tmp_path):
    model = trained_model().eval()
    torch.manual_seed(9)
    x = torch.randn(3, 9, 16, 24)
    with torch.no_grad():
        before = model(x)
    path = save_checkpoint(Checkpoint.from_model(model, metadata()), tmp_path / "ck.pt")
    loaded = load_checkpoint(path)
    net = loaded.model()
    assert not net.training
    with torch.no_grad():
        after = net(x)
    assert torch.equal(before, after)
    assert loaded.config == CONFIG
    assert loaded.package_version == sar2ndvi.__version__
    # buffers (BN running stats) travel too, not only parameters
    assert same(dict(model.state_dict()), loaded.state_dict)


def test_metadata_round_trips_exactly(tmp_path):
    meta = metadata()
    path = save_checkpoint(Checkpoint.from_model(trained_model(0), meta), tmp_path / "ck.pt")
    loaded = load_checkpoint(path).metadata
    assert same(loaded, meta)
    assert FeatureSpec.from_dict(loaded["features"]) == FeatureSpec()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def small_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint.from_model(UNet(width=1, depth=1), {})


@settings(max_examples=40, deadline=None)
# "normalisation" and "patch" have a checked shape (tested below); any other key is free
@given(meta=st.dictionaries(st.text().filter(lambda k: k not in {"normalisation", "patch"}),
                            json_values, max_size=5))
def test_any_json_metadata_round_trips_exactly(meta, small_checkpoint, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "hypothesis-ck.pt"
    ck = Checkpoint(small_checkpoint.config, small_checkpoint.state_dict, meta)
    assert same(load_checkpoint(save_checkpoint(ck, path)).metadata, meta)


def test_tuples_and_numpy_scalars_become_json_types(tmp_path):
    meta = {"shape": (1, 2), "nested": [(3,)], "n": np.int64(7), "c": np.float32(0.1),
            "d": np.float64(1 / 3)}
    ck = Checkpoint.from_model(UNet(width=1, depth=1), meta)
    loaded = load_checkpoint(save_checkpoint(ck, tmp_path / "ck.pt"))
    expected = {"shape": [1, 2], "nested": [[3]], "n": 7, "c": float(np.float32(0.1)),
                "d": 1 / 3}
    assert same(loaded.metadata, expected)


def test_file_loads_with_plain_weights_only_torch_load(tmp_path):
    model = trained_model(1)
    training = {"epoch": 3, "rng": {"torch": torch.get_rng_state()}}
    path = save_checkpoint(Checkpoint.from_model(model, metadata(), training), tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT == "sar2ndvi-checkpoint"
    assert raw["format_version"] == FORMAT_VERSION == 1
    header = json.loads(raw["header"])
    assert UNetConfig.from_dict(header["model"]) == CONFIG
    assert header["package_version"] == sar2ndvi.__version__
    assert same(header["metadata"], json.loads(json.dumps(metadata())))
    assert all(type(v) is torch.Tensor for v in raw["state_dict"].values())
    # by hand: build the net from the header and load the weights strictly
    net = UNet(UNetConfig.from_dict(header["model"]))
    net.load_state_dict(raw["state_dict"], strict=True)
    assert raw["training"]["epoch"] == 3


def test_training_state_round_trips(tmp_path):
    model = trained_model(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    model(torch.randn(2, 9, 8, 8)).mean().backward()
    opt.step()
    sched.step()
    training = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 7,
        "best_val_loss": 0.0423,
        "worst": float("inf"),  # not JSON, but fine in the native training state
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "history": [{"epoch": 1, "train_loss": 0.5, "val": {"rmse": 0.07}}],
    }
    path = save_checkpoint(Checkpoint.from_model(model, {}, training), tmp_path / LAST)
    loaded = load_checkpoint(path).training
    assert same(loaded, training)
    assert isinstance(loaded["optimizer"]["state"][0]["exp_avg"], torch.Tensor)


def test_restored_optimizer_continues_identically(tmp_path):
    """Save mid-run, restore into fresh objects: the next steps give the same bytes."""

    def step(model, opt, sched):
        x = torch.randn(2, 9, 8, 8)  # from the global RNG: restored with the checkpoint
        loss = (model(x) - 0.5).abs().mean()  # train mode: dropout draws from the RNG too
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    def make(model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    torch.manual_seed(1)
    model = UNet(CONFIG).train()
    opt, sched = make(model)
    step(model, opt, sched)
    training = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": torch.get_rng_state()}
    save_checkpoint(Checkpoint.from_model(model, {}, training), tmp_path / LAST)
    for _ in range(2):  # the uninterrupted run
        step(model, opt, sched)

    ck = load_checkpoint(tmp_path / LAST)
    resumed = UNet(ck.config)
    resumed.load_state_dict(ck.state_dict)
    resumed.train()
    opt2, sched2 = make(resumed)
    opt2.load_state_dict(ck.training["optimizer"])
    sched2.load_state_dict(ck.training["scheduler"])
    torch.set_rng_state(ck.training["rng"])
    for _ in range(2):
        step(resumed, opt2, sched2)

    assert same(dict(model.state_dict()), dict(resumed.state_dict()))
    assert sched.get_last_lr() == sched2.get_last_lr()
    # and the steps did move the weights (the test is not comparing two untouched copies)
    assert not torch.equal(resumed.head.weight, ck.state_dict["head.weight"])


def test_from_model_copies_the_weights():
    model = trained_model(0)
    ck = Checkpoint.from_model(model, {})
    with torch.no_grad():
        model.head.weight.add_(1.0)
    assert not torch.equal(ck.state_dict["head.weight"], model.head.weight)
    assert not any(t.requires_grad for t in ck.state_dict.values())
    wrapped = torch.nn.DataParallel(model)  # a wrapper keeps the U-net as .module
    assert Checkpoint.from_model(wrapped, {}).config == CONFIG
    with pytest.raises(InputError, match="UNet"):
        Checkpoint.from_model(torch.nn.Linear(2, 2), {})


def test_from_model_snapshots_the_training_state():
    model = trained_model(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(1, 9, 8, 8)).mean().backward()
    opt.step()
    ck = Checkpoint.from_model(model, {}, {"optimizer": opt.state_dict(), "epoch": 1})
    saved_avg = ck.training["optimizer"]["state"][0]["exp_avg"].clone()
    opt.step()  # training goes on: the live state changes in place
    assert not torch.equal(opt.state_dict()["state"][0]["exp_avg"], saved_avg)
    assert torch.equal(ck.training["optimizer"]["state"][0]["exp_avg"], saved_avg)


def test_building_the_model_leaves_the_callers_rng_alone():
    ck = Checkpoint.from_model(trained_model(0), {})
    torch.manual_seed(123)
    state = torch.get_rng_state()
    ck.model()
    assert torch.equal(torch.get_rng_state(), state)


def test_model_loads_strictly(tmp_path):
    ck = Checkpoint.from_model(trained_model(0), {})
    wrong = Checkpoint(UNetConfig(width=8, depth=2), ck.state_dict, {})
    with pytest.raises(InputError, match="do not fit"):
        wrong.model()
    partial = Checkpoint(CONFIG, {k: v for k, v in ck.state_dict.items() if "head" not in k}, {})
    with pytest.raises(InputError, match="head"):
        partial.model()


# --- save-time validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "culprit"),
    [
        ({"normalisation": {"band": ["vv"], "center": [float("nan")], "scale": [1.0]}},
         r"metadata\['normalisation'\]\['center'\]\[0\].*NaN"),
        ({"x": float("inf")}, r"metadata\['x'\]"),
        ({"x": [np.float32("nan")]}, r"metadata\['x'\]\[0\] is .*nan"),
        ({"x": 1j}, r"metadata\['x'\] is a complex"),
        ({"x": np.arange(3)}, r"metadata\['x'\] is a ndarray.*tolist"),
        ({"x": {1: "a"}}, r"metadata\['x'\] has key 1"),
        ({"x": {"a", "b"}}, r"metadata\['x'\] is a set"),
        ({"x": Path("a")}, r"metadata\['x'\] is a PosixPath|metadata\['x'\] is a WindowsPath"),
        ({"normalisation": {"band": ["vv", "vh"], "center": [0.0], "scale": [1.0]}},
         "differ in length"),
        ({"patch": {"size": 128, "overlap": 128}}, "0 <= overlap < size"),
        ({"patch": {"size": "128", "overlap": 64}}, "patch"),
        ({"patch": {"size": 128, "overlap": True}}, "patch"),
        ({"normalisation": {"band": ["vv"], "center": [0.0], "scale": [0.0]}},
         "positive scales"),
        ({"normalisation": {"band": [1], "center": [0.0], "scale": [1.0]}}, "band names"),
    ],
)
def test_bad_metadata_is_refused_before_writing(tmp_path, bad, culprit):
    path = tmp_path / "ck.pt"
    with pytest.raises(InputError, match=culprit):
        save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), bad), path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("training", "culprit"),
    [
        ({"rng": {"numpy": ("MT19937", np.zeros(3, np.uint32))}},
         r"training\['rng'\]\['numpy'\]\[1\] is a numpy.ndarray.*as_tensor"),
        ({"best": np.float64(0.1)}, r"training\['best'\] is a numpy.float64"),
        ({"opt": torch.optim.SGD}, r"training\['opt'\]"),
    ],
)
def test_training_state_that_weights_only_cannot_load_is_refused(tmp_path, training, culprit):
    with pytest.raises(InputError, match=culprit):
        save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), {}, training),
                        tmp_path / "ck.pt")
    assert list(tmp_path.iterdir()) == []


def test_numpy_generator_state_is_plain_data(tmp_path):
    """The recommended way to keep a NumPy RNG: Generator.bit_generator.state (ints)."""
    rng = np.random.default_rng(42)
    rng.random(5)
    training = {"rng": {"numpy": rng.bit_generator.state}}
    path = tmp_path / "ck.pt"
    save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), {}, training), path)
    restored = np.random.default_rng()
    restored.bit_generator.state = load_checkpoint(path).training["rng"]["numpy"]
    assert np.array_equal(restored.random(5), rng.random(5))


# --- loading errors ----------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path) -> Path:
    return save_checkpoint(Checkpoint.from_model(trained_model(1), metadata()),
                           tmp_path / "model" / BEST)


def test_folder_means_its_best_file(saved):
    folder = saved.parent
    assert resolve(folder) == saved
    assert resolve(saved) == saved
    assert same(load_checkpoint(folder).metadata, load_checkpoint(saved).metadata)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "ck.pt"
    with pytest.raises(InputError, match=rf"{missing}.*does not exist"):
        load_checkpoint(missing)


def test_folder_without_best_file_points_at_last(tmp_path):
    save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), {}), tmp_path / LAST)
    with pytest.raises(InputError, match=rf"no checkpoint {BEST} in folder .*{LAST} is there"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path / LAST).config == UNetConfig(width=1, depth=1)


@pytest.mark.parametrize("keep", [0, 100, 0.5, -10, -1])
def test_truncated_file_is_reported_as_corrupt(saved, keep):
    data = saved.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data) if keep else 0
    saved.write_bytes(data[:n])
    with pytest.raises(InputError, match=rf"{saved} is corrupt or not a sar2ndvi checkpoint"):
        load_checkpoint(saved)


@pytest.mark.parametrize("content", [b"hello world\n" * 20, bytes(range(256)) * 40])
def test_random_file_is_reported_as_corrupt(tmp_path, content):
    path = tmp_path / "ck.pt"
    path.write_bytes(content)
    with pytest.raises(InputError, match="corrupt or not a sar2ndvi checkpoint"):
        load_checkpoint(path)


def test_flipped_weight_byte_is_detected(saved):
    data = bytearray(saved.read_bytes())
    raw = torch.load(saved, weights_only=True)
    # find the bytes of the largest tensor in the file and damage one
    _, tensor = max(raw["state_dict"].items(), key=lambda kv: kv[1].numel())
    needle = tensor.reshape(-1)[:8].numpy().tobytes()
    at = bytes(data).index(needle)
    data[at + 3] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(InputError, match="SHA-256"):
        load_checkpoint(saved)


def test_weights_digest_tells_weights_apart():
    a = Checkpoint.from_model(trained_model(0), {}).state_dict
    b = {k: v.clone() for k, v in a.items()}
    assert weights_digest(a) == weights_digest(b)
    b["head.bias"] = b["head.bias"] + 1e-7
    assert weights_digest(a) != weights_digest(b)
    renamed = {("x" + k if k == "head.bias" else k): v for k, v in a.items()}
    assert weights_digest(a) != weights_digest(renamed)
    assert weights_digest({"w": torch.zeros(2, dtype=torch.bfloat16)}) != weights_digest(
        {"w": torch.zeros(2, dtype=torch.float16)})


def test_bare_state_dict_is_explained(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(UNet(width=1, depth=1).state_dict(), path)
    with pytest.raises(InputError, match=r"bare state_dict.*Checkpoint\(UNetConfig"):
        load_checkpoint(path)


def test_pickled_model_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(UNet(width=1, depth=1), path)  # a whole pickled object, not plain data
    with pytest.raises(InputError, match=r"pickled Python object \(sar2ndvi\.model\.UNet\)"):
        load_checkpoint(path)


def test_newer_format_version_asks_for_an_upgrade(saved):
    raw = torch.load(saved, weights_only=True)
    raw["format_version"] = FORMAT_VERSION + 1
    torch.save(raw, saved)
    with pytest.raises(InputError, match=r"format_version 2 .* reads up to 1: upgrade"):
        load_checkpoint(saved)


def test_other_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"epoch": 3, "format": "something-else"}, path)
    with pytest.raises(InputError, match="format marker"):
        load_checkpoint(path)


# --- atomic writes -----------------------------------------------------------------------


def test_parent_folders_are_created_and_files_replaced(tmp_path):
    path = tmp_path / "run" / "deep" / "model" / BEST
    save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), {"n": 1}), path)
    save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), {"n": 2}), path)
    assert load_checkpoint(path).metadata == {"n": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == [BEST]


def test_failed_save_leaves_the_old_checkpoint_intact(saved, monkeypatch):
    old_bytes = saved.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes hit the disk, then...
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointWriteError, match=rf"{saved}.*No space left") as info:
        save_checkpoint(Checkpoint.from_model(UNet(CONFIG), {"new": True}), saved)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, Sar2ndviError)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real_save)

    assert saved.read_bytes() == old_bytes
    assert sorted(p.name for p in saved.parent.iterdir()) == [BEST]  # no temp file left
    assert same(load_checkpoint(saved).metadata, metadata())


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    def boom(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), {}), tmp_path / "ck.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = save_checkpoint(Checkpoint.from_model(UNet(width=1, depth=1), {}), tmp_path / "c")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


# --- safetensors -------------------------------------------------------------------------


def test_safetensors_export_explains_the_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    ck = Checkpoint.from_model(UNet(width=1, depth=1), {})
    with pytest.raises(InputError, match="pip install safetensors"):
        export_safetensors(ck, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []
