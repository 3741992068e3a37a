"""Checkpoints: one file with the weights and everything needed to predict (or to resume).

A checkpoint file is ``torch.save`` of a dict of plain data only (tensors, dicts, lists,
tuples, strings, numbers, bools, None), so ``torch.load(path, weights_only=True)`` opens it
without unpickling arbitrary Python objects (a pickle can run any code on load):

=================  =======================================================================
``format``         ``"sar2ndvi-checkpoint"``
``format_version`` ``1`` (`FORMAT_VERSION`)
``header``         a JSON string: ``{"model": UNetConfig.to_dict(), "package_version": ...,
                   "torch_version": ..., "metadata": {...}}``; ``metadata`` is the caller's:
                   feature spec, normalisation ``{"band", "center", "scale"}``, patch
                   ``{"size", "overlap"}``, anything else JSON can hold
``state_dict``     the model's weights and buffers, CPU tensors keyed by layer name
``training``       None, or the trainer's resume state (optimizer / scheduler state
                   dicts, epoch, best validation loss, RNG states, history)
=================  =======================================================================

Metadata goes through JSON so that it round-trips exactly (and is checked at save time);
the training state stays native because optimizer state holds tensors and int keys.
`save_checkpoint` is atomic: the file at `path` is either the previous checkpoint or the new
one, never half of one. A training run writes ``model/checkpoint.pt`` (`BEST`, best weights)
and ``model/last.pt`` (`LAST`, for resume); a folder given to `load_checkpoint` means its
`BEST` file. See docs/model.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import pickle
import re
import secrets
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor, nn

from sar2ndvi import __version__
from sar2ndvi.errors import InputError, Sar2ndviError
from sar2ndvi.model import UNet, UNetConfig

__all__ = [
    "BEST",
    "FORMAT",
    "FORMAT_VERSION",
    "LAST",
    "Checkpoint",
    "CheckpointWriteError",
    "export_safetensors",
    "load_checkpoint",
    "resolve",
    "save_checkpoint",
    "weights_digest",
]

#: File name of the best weights in a training output folder (``model/checkpoint.pt``).
BEST = "checkpoint.pt"
#: File name of the latest state in a training output folder, for resuming.
LAST = "last.pt"
FORMAT = "sar2ndvi-checkpoint"
#: The newest format this version reads and the one it writes.
FORMAT_VERSION = 1

# Leaf types that torch.load(weights_only=True) rebuilds without help (its allow-list)
_PLAIN_LEAVES = frozenset(
    {str, bytes, int, float, complex, bool, type(None), torch.device, torch.dtype}
)


class CheckpointWriteError(Sar2ndviError, OSError):
    """A checkpoint could not be written (disk full, permissions); the old file is intact."""


@dataclass
class Checkpoint:
    """A trained U-net with what prediction needs, and optionally the state to resume.

    Attributes:
        config: the network's shape.
        state_dict: weights and buffers, tensors keyed by layer name (CPU after loading).
        metadata: JSON-serialisable dict: ``features`` (FeatureSpec.to_dict()),
            ``normalisation`` ({"band": [...], "center": [...], "scale": [...]}),
            ``patch`` ({"size": 128, "overlap": 64}) and anything else.
        training: None, or a dict of tensors and plain containers to resume training.
        package_version: the sar2ndvi version that wrote the checkpoint.
    """

    config: UNetConfig
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any]
    training: dict[str, Any] | None = None
    package_version: str = __version__

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        metadata: Mapping[str, Any],
        training: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """A snapshot of `model` now: weights and the tensors of `training` copied to CPU.

        Training may go on after the call without changing the snapshot (an optimizer's
        ``state_dict()`` holds its live tensors). `model` may be a `UNet` or a wrapper of
        one (``torch.compile``, DataParallel).
        """
        unet = _unwrap(model)
        state = {k: v.detach().to("cpu", copy=True) for k, v in unet.state_dict().items()}
        return cls(unet.config, state, dict(metadata), _cpu_copy(training))

    def model(self, device: str | torch.device = "cpu") -> UNet:
        """The U-net with these weights loaded strictly, on `device`, in eval mode.

        Raises:
            InputError: the weights do not fit the config (missing or unexpected layers,
                or different shapes).
        """
        # the random init is overwritten at once: do not advance the caller's RNG stream
        with torch.random.fork_rng(devices=[]):
            net = UNet(self.config)
        try:
            net.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise InputError(
                f"checkpoint weights do not fit a U-net of {self.config}: {exc}"
            ) from exc
        return net.to(device).eval()


def _cpu_copy(value: Any) -> Any:
    """`value` with every tensor in its dicts, lists and tuples copied to CPU."""
    if isinstance(value, Tensor):
        return value.detach().to("cpu", copy=True)
    if type(value) in (dict, OrderedDict):
        return type(value)((k, _cpu_copy(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _unwrap(model: nn.Module) -> UNet:
    for _ in range(3):  # torch.compile keeps `_orig_mod`, (Distributed)DataParallel `module`
        if isinstance(model, UNet):
            return model
        model = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
    if isinstance(model, UNet):
        return model
    raise InputError("Checkpoint.from_model needs a sar2ndvi UNet (or a compiled/wrapped one)")


# --- validation --------------------------------------------------------------------------


def _json_clean(value: Any, where: str) -> Any:
    """`value` as JSON data (tuples become lists), or InputError naming the bad entry."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Real):
        # NumPy scalars (statistics often arrive as float32) become Python numbers of the
        # same value; JSON has no other number types
        if isinstance(value, numbers.Integral):
            return int(value)
        if not math.isfinite(value):
            raise InputError(
                f"checkpoint metadata {where} is {value!r}: NaN and infinity are not JSON; "
                "store None or a string instead"
            )
        return float(value)
    if isinstance(value, list | tuple):
        return [_json_clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InputError(
                    f"checkpoint metadata {where} has key {k!r} of type {type(k).__name__}; "
                    "JSON object keys must be strings"
                )
            out[k] = _json_clean(v, f"{where}[{k!r}]")
        return out
    hint = " (use .tolist() or int()/float())" if hasattr(value, "tolist") else ""
    raise InputError(
        f"checkpoint metadata {where} is a {type(value).__name__}, which JSON cannot hold"
        f"{hint}; metadata may only contain dicts, lists, strings, numbers, bools and None"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_known_metadata(metadata: Mapping[str, Any]) -> None:
    """The documented entries, when present, have the shape prediction relies on."""
    norm = metadata.get("normalisation")
    if norm is not None:
        keys = ("band", "center", "scale")
        if not isinstance(norm, Mapping) or not all(isinstance(norm.get(k), list) for k in keys):
            raise InputError(
                "checkpoint metadata['normalisation'] must be "
                '{"band": [...], "center": [...], "scale": [...]} (lists, one entry per band)'
            )
        lengths = {k: len(norm[k]) for k in keys}
        if len(set(lengths.values())) != 1:
            raise InputError(
                f"checkpoint metadata['normalisation'] lists differ in length {lengths}; "
                "give one band name, centre and scale per feature band"
            )
        if not (
            all(isinstance(b, str) for b in norm["band"])
            and all(_is_number(c) for c in norm["center"])
            and all(_is_number(s) and s > 0 for s in norm["scale"])
        ):
            raise InputError(
                "checkpoint metadata['normalisation'] needs band names (strings), numeric "
                f"centres and positive scales, got {dict(norm)!r}"
            )
    patch = metadata.get("patch")
    if patch is not None:
        size = patch.get("size") if isinstance(patch, Mapping) else None
        overlap = patch.get("overlap") if isinstance(patch, Mapping) else None
        if not (
            _is_number(size)
            and _is_number(overlap)
            and isinstance(size, int)
            and isinstance(overlap, int)
            and 0 <= overlap < size
        ):
            raise InputError(
                f"checkpoint metadata['patch'] must be {{'size': int, 'overlap': int}} with "
                f"0 <= overlap < size (pixels), got {patch!r}; the paper uses 128 and 64"
            )


def _check_plain(value: Any, where: str) -> None:
    """InputError unless `value` holds only what torch.load(weights_only=True) rebuilds."""
    # exact types: a subclass (numpy.float64, an IntEnum, a namedtuple) pickles as its own
    # class, which the weights_only loader refuses
    kind = type(value)
    if kind in _PLAIN_LEAVES or kind in (Tensor, nn.Parameter):
        return
    if kind in (list, tuple, set, frozenset, torch.Size):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if kind in (dict, OrderedDict):
        for k, v in value.items():
            _check_plain(k, f"{where} key {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    _refuse(value, where)


def _refuse(value: Any, where: str) -> None:
    hint = (
        "; convert it with torch.as_tensor(...)"
        if hasattr(value, "__array__")
        else "; store its state_dict() or a plain dict instead"
    )
    raise InputError(
        f"checkpoint {where} is a {type(value).__module__}.{type(value).__qualname__}, which "
        "a weights_only load cannot rebuild: only tensors, dicts, lists, tuples, sets, "
        f"strings, numbers, bools and None may be stored{hint}"
    )


def _payload(checkpoint: Checkpoint) -> dict[str, Any]:
    if not isinstance(checkpoint, Checkpoint):
        raise InputError(
            f"save_checkpoint takes a Checkpoint, got {type(checkpoint).__name__}; "
            "use Checkpoint.from_model(model, metadata)"
        )
    if not isinstance(checkpoint.config, UNetConfig):
        raise InputError(f"Checkpoint.config must be a UNetConfig, got {checkpoint.config!r}")
    if not isinstance(checkpoint.metadata, Mapping):
        raise InputError(
            f"checkpoint metadata must be a dict, got {type(checkpoint.metadata).__name__}"
        )
    metadata = _json_clean(checkpoint.metadata, "metadata")
    _check_known_metadata(metadata)
    state = checkpoint.state_dict
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise InputError("Checkpoint.state_dict must map layer names (str) to tensors")
    if checkpoint.training is not None:
        if not isinstance(checkpoint.training, Mapping):
            raise InputError(
                f"checkpoint training state must be a dict or None, got "
                f"{type(checkpoint.training).__name__}"
            )
        _check_plain(checkpoint.training, "training")
    weights = {k: v.detach().cpu() for k, v in state.items()}
    header = {
        "model": checkpoint.config.to_dict(),
        "package_version": str(checkpoint.package_version),
        "torch_version": torch.__version__.split("+")[0],
        "weights_sha256": _digest(weights),
        "metadata": metadata,
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "header": json.dumps(header, allow_nan=False),
        # plain tensors (not Parameters) on CPU: any machine can load them
        "state_dict": weights,
        "training": None if checkpoint.training is None else dict(checkpoint.training),
    }


def weights_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) over names, dtypes, shapes and bytes of the tensors, in order.

    Identifies a set of weights (e.g. as a cache or Dask token); it is stored in the header.

    torch's zip container does not check its records, so a flipped byte in the weights
    would otherwise load silently; this makes it a clear "corrupt" error.
    """
    h = hashlib.sha256()
    for name, t in state.items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # a byte view works for every dtype (bfloat16 has no NumPy twin)
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


_digest = weights_digest  # the name predict.py imports


# --- writing -----------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through a temp file in its folder, fsync, rename over `path`.

    A reader sees the old file or the complete new one; on any failure the temp file is
    removed and the old file is left untouched.
    """
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointWriteError(
            exc.errno, f"cannot create the folder of checkpoint {path}: {exc.strerror or exc}"
        ) from exc
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        # O_EXCL: never reuse someone's file; mode 0o666 lets the umask decide, as for open()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointWriteError(
                exc.errno,
                f"could not write checkpoint {path} ({exc.strerror or exc}); any previous "
                "file there is unchanged: free some space or choose another folder",
            ) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # make the rename itself durable; not possible (nor needed) on every OS
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write `checkpoint` to the file `path` atomically; parent folders are created.

    Returns:
        The path written.

    Raises:
        InputError: metadata that JSON cannot hold exactly (NaN, numpy arrays, non-string
            keys, objects), or training state that a weights_only load cannot rebuild.
        CheckpointWriteError: the file could not be written; a previous file at `path` is
            left intact and no temp file remains.
    """
    payload = _payload(checkpoint)  # validate everything before touching the disk
    return _atomic_write(Path(path), lambda f: torch.save(payload, f))


# --- reading -----------------------------------------------------------------------------


def resolve(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file `path` names: a folder means its `BEST` file (checkpoint.pt)."""
    p = Path(path).expanduser()
    return p / BEST if p.is_dir() else p


def _corrupt(path: Path, why: str) -> InputError:
    return InputError(
        f"{path} is corrupt or not a sar2ndvi checkpoint ({why}); pass a file written by "
        "save_checkpoint (a training run's model/checkpoint.pt); if it was cut short or "
        "damaged in a copy, copy it again or re-train"
    )


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, never unpickling arbitrary objects.

    Args:
        path: the file, or a training output folder (its `BEST` file is read).
        map_location: where tensors land (as for `torch.load`).

    Raises:
        InputError: missing file, a file that is not a checkpoint (corrupt, truncated, a
            bare state_dict, a pickled object), or one written in a newer format.
    """
    given = Path(path).expanduser()
    file = resolve(given)
    if not file.is_file():
        if given.is_dir():
            hint = f"; {LAST} is there (the last epoch)" if (given / LAST).is_file() else ""
            raise InputError(f"no checkpoint {BEST} in folder {given}{hint}")
        raise InputError(
            f"checkpoint {file} does not exist; give the {BEST} file of a training run "
            "(or its model/ folder)"
        )
    try:
        raw = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:  # a pickled object (e.g. a whole model saved with torch.save(model))
            raise InputError(
                f"{file} holds a pickled Python object ({found.group(1)}) that a safe "
                "(weights_only) load refuses, so it was not written by save_checkpoint; "
                "load it by hand with torch.load(..., weights_only=False) only if you trust "
                "where it came from"
            ) from exc
        raise _corrupt(file, "not a torch file, or damaged") from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise InputError(f"cannot read checkpoint {file}: {exc.strerror or exc}") from exc
    except (
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ) as exc:
        # torch reports a truncated zip as OSError or RuntimeError, an empty file as
        # EOFError, text as KeyError, ...
        first_line = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        raise _corrupt(file, f"{type(exc).__name__}: {first_line[:120]}") from exc
    return _from_payload(raw, file)


def _from_payload(raw: Any, file: Path) -> Checkpoint:
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
        if isinstance(raw, Mapping) and raw and all(isinstance(v, Tensor) for v in raw.values()):
            raise InputError(
                f"{file} is a bare state_dict (tensors keyed by layer name), not a sar2ndvi "
                "checkpoint: it lacks the model config, feature recipe and normalisation "
                "needed to predict. Wrap it: save_checkpoint(Checkpoint(UNetConfig(...), "
                "state_dict, metadata), path)"
            )
        raise _corrupt(file, f"no {FORMAT!r} format marker")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _corrupt(file, f"format_version {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(
            f"{file} is a format_version {version} checkpoint; this sar2ndvi ({__version__}) "
            f"reads up to {FORMAT_VERSION}: upgrade sar2ndvi (pip install -U sar2ndvi)"
        )
    try:
        header = json.loads(raw["header"])
        config = UNetConfig.from_dict(header["model"])
        metadata = header["metadata"]
        state = raw["state_dict"]
        training = raw.get("training")
        package_version = str(header.get("package_version", "unknown"))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise _corrupt(file, f"bad header: {exc!r}") from exc
    except InputError as exc:
        raise InputError(f"{file}: {exc}") from exc
    if not isinstance(metadata, dict) or not isinstance(state, dict):
        raise _corrupt(file, "metadata or state_dict is not a dict")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise _corrupt(file, "state_dict holds something other than named tensors")
    expected = header.get("weights_sha256")
    if expected is not None and _digest(state) != expected:
        raise _corrupt(file, "the weights do not match their SHA-256 checksum")
    return Checkpoint(config, dict(state), metadata, training, package_version)


# --- export ------------------------------------------------------------------------------


def export_safetensors(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write the weights as a ``.safetensors`` file (optional ``safetensors`` package).

    The checkpoint's header (model config, versions, metadata) goes, as the same JSON
    string, into the safetensors metadata under ``"sar2ndvi"``; training state is left out.
    The write is atomic, like `save_checkpoint`.

    Raises:
        InputError: the ``safetensors`` package is not installed, or bad metadata.
    """
    try:
        from safetensors.torch import save as safetensors_bytes
    except ImportError as exc:
        raise InputError(
            "export_safetensors needs the optional 'safetensors' package: "
            "pip install safetensors (the .pt checkpoint itself needs nothing extra)"
        ) from exc
    payload = _payload(
        Checkpoint(
            checkpoint.config,
            checkpoint.state_dict,
            checkpoint.metadata,
            None,
            checkpoint.package_version,
        )
    )
    tensors = {k: v.contiguous() for k, v in payload["state_dict"].items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "sar2ndvi": payload["header"]}
    data = safetensors_bytes(tensors, metadata=meta)
    return _atomic_write(Path(path), lambda f: f.write(data))
