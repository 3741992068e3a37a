"""The compact U-net that regresses NDVI from a normalised Sentinel-1 feature stack.

``UNet(UNetConfig())`` maps a ``(B, 9, H, W)`` float32 stack (the paper's 9 channels, see
`sar2ndvi.features`) to ``(B, 1, H, W)`` NDVI in [-1, 1]. Each of the ``depth`` levels is a
block of two 3x3 convolutions (+ batch norm) + ReLU followed by a 2x2 max-pool; the bottleneck
has ``width * 2**depth`` filters; the decoder mirrors the encoder with 2x2 stride-2 transposed
convolutions and skip concatenations; a 1x1 convolution and ``tanh`` make the output. H and W
must be multiples of ``2**depth`` (`UNetConfig.multiple`): the patch pipeline pads to that.

Up-sampling is a learned 2x2, stride-2 transposed convolution rather than bilinear
interpolation + convolution: its kernel tiles the output without overlap (the exact inverse
geometry of the 2x2 max-pool), so it has none of the uneven-overlap checkerboard of larger
transposed kernels; it halves the channels in the same step (fewer parameters than
upsample + 3x3 conv); and its backward pass is deterministic on CUDA, where the backward of
bilinear interpolation is not (``torch.use_deterministic_algorithms`` refuses it), which the
"same seed, same bytes" rule of the project needs. See docs/model.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from sar2ndvi.errors import InputError

__all__ = ["MAX_DEPTH", "OUTPUTS", "UNet", "UNetConfig", "count_parameters"]

#: Deepest supported encoder: 2**6 = 64 px is already larger than the receptive field needs.
MAX_DEPTH = 6
#: The head activations: NDVI regression ("tanh") and landslide segmentation ("sigmoid").
OUTPUTS = ("tanh", "sigmoid")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `width=True` is a mistake, not a width of 1
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class UNetConfig:
    """The shape of a `UNet`: everything needed to rebuild it before loading weights.

    Attributes:
        in_channels: input channels (bands of the feature stack), >= 1.
        out_channels: output channels (1: NDVI), >= 1.
        width: filters of the first level, doubled at each level down, >= 1.
        depth: number of 2x down-samplings (1..6); H and W must be multiples of 2**depth.
        dropout: spatial dropout probability (whole feature maps, `Dropout2d`) in the
            bottleneck and the decoder blocks, in [0, 1).
        batch_norm: batch normalisation after every 3x3 convolution (convolutions then
            have no bias, which the norm's shift would make redundant).
        output: the head's activation: "tanh" (regression of NDVI in [-1, 1]) or
            "sigmoid" (the segmentation twin: landslide probability in [0, 1]).
    """

    in_channels: int = 9
    out_channels: int = 1
    width: int = 32
    depth: int = 3
    dropout: float = 0.1
    batch_norm: bool = True
    output: str = "tanh"

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "width"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InputError(
                    f"UNetConfig.{name} must be an integer >= 1, got {value!r}"
                    + (
                        "; in_channels is the number of feature bands (9 for the paper's stack)"
                        if name == "in_channels"
                        else ""
                    )
                )
        if not _is_int(self.depth) or not 1 <= self.depth <= MAX_DEPTH:
            raise InputError(
                f"UNetConfig.depth must be an integer in 1..{MAX_DEPTH} (number of 2x "
                f"down-samplings), got {self.depth!r}; the default is 3"
            )
        dropout = self.dropout
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, int | float)
            or not math.isfinite(dropout)
            or not 0 <= dropout < 1
        ):
            raise InputError(
                f"UNetConfig.dropout must be a probability in [0, 1), got {dropout!r}; "
                "use 0 to switch dropout off"
            )
        if not isinstance(self.batch_norm, bool):
            raise InputError(
                f"UNetConfig.batch_norm must be true or false, got {self.batch_norm!r}"
            )
        if self.output not in OUTPUTS:
            raise InputError(
                f"UNetConfig.output must be one of {list(OUTPUTS)}, got {self.output!r}"
            )
        # store the probability as a float whatever number was given, so that to_dict()
        # and equality do not depend on whether 0 or 0.0 was written
        object.__setattr__(self, "dropout", float(dropout))

    @property
    def multiple(self) -> int:
        """H and W of an input must be multiples of this many pixels (2**depth)."""
        return 2**self.depth

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (ints, a float and a bool)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        """The config of `to_dict()` output; missing fields take their defaults.

        Raises:
            InputError: `data` is not a mapping, or holds a key that is not a field.
        """
        if not isinstance(data, Mapping):
            raise InputError(f"a U-net config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InputError(
                f"unknown U-net config keys {unknown}; known keys: {', '.join(sorted(known))} "
                "(was the checkpoint written by a newer sar2ndvi?)"
            )
        return cls(**data)


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    """Two (3x3 conv, padding 1 -> [BN] -> ReLU): (B, c_in, H, W) -> (B, c_out, H, W)."""
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_out), (c_out, c_out)):
        layers.append(nn.Conv2d(a, b, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _dropout(p: float) -> nn.Module:
    # Identity rather than Dropout2d(0): no random numbers drawn, so switching dropout
    # off does not shift the RNG stream that shuffling and augmentation use
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


class UNet(nn.Module):
    """U-net regression of NDVI: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    Args:
        config: the shape of the network (defaults: `UNetConfig()`).
        **overrides: fields of `UNetConfig` to replace, e.g. ``UNet(width=16)``.

    Weights are initialised from torch's global RNG (He-normal for the 3x3 convolutions),
    so ``torch.manual_seed(s)`` before construction gives the same weights every time.
    """

    def __init__(self, config: UNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is not None and not isinstance(config, UNetConfig):
            raise InputError(
                f"UNet(config=...) takes a UNetConfig, got {type(config).__name__}; "
                "use UNetConfig.from_dict(...) for a dict"
            )
        known = {f.name for f in fields(UNetConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(
                f"unknown UNet arguments {unknown}; UNetConfig fields: {', '.join(sorted(known))}"
            )
        config = replace(config, **overrides) if config is not None else UNetConfig(**overrides)
        self.config = config
        bn, p = config.batch_norm, config.dropout
        widths = [config.width * 2**level for level in range(config.depth + 1)]

        self.encoders = nn.ModuleList()
        c_in = config.in_channels
        for w in widths[:-1]:
            self.encoders.append(_conv_block(c_in, w, bn))
            c_in = w
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.bottleneck = nn.Sequential(_conv_block(widths[-2], widths[-1], bn), _dropout(p))
        # decoder levels, deepest first: up-sample (halving channels), concatenate the skip
        # (back to 2x channels), then a conv block down to the level's width
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.ups.append(nn.ConvTranspose2d(w_low, w, kernel_size=2, stride=2))
            self.decoders.append(nn.Sequential(_conv_block(2 * w, w, bn), _dropout(p)))
        self.head = nn.Conv2d(widths[0], config.out_channels, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init keeps the activation variance through the ReLU stacks, which matters
        # when batch_norm is off (torch's default init shrinks it by ~6x per layer).
        # Transposed convs and the head (no ReLU after them) keep torch's default.
        for module in [*self.encoders, self.bottleneck, *self.decoders]:
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)

    def _check_input(self, x: Tensor) -> None:
        cfg = self.config
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"UNet input must be a 4-D tensor (batch, channels, height, width), got "
                f"{shape}; add a batch dimension with x[None] for a single patch"
            )
        if x.shape[1] != cfg.in_channels:
            raise InputError(
                f"UNet expects {cfg.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}); the feature stack and the model config "
                "(in_channels) must agree"
            )
        h, w = x.shape[-2:]
        m = cfg.multiple
        if h % m or w % m or h == 0 or w == 0:
            raise InputError(
                f"UNet input height and width must be positive multiples of {m} "
                f"(2**depth, depth={cfg.depth}), got shape {tuple(x.shape)}; pad the patch "
                f"to {_round_up(h, m)} x {_round_up(w, m)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """NDVI (or, with ``output="sigmoid"``, landslide probability) for a batch of
        feature patches.

        Args:
            x: ``(B, in_channels, H, W)`` float tensor, H and W multiples of
                ``config.multiple``.

        Returns:
            ``(B, out_channels, H, W)`` tensor of NDVI in [-1, 1] (probability in [0, 1]).

        Raises:
            InputError: wrong number of dimensions or channels, or H/W not a multiple.
        """
        logits = self.logits(x)
        # tanh bounds the prediction to NDVI's own range [-1, 1] (see docs/model.md)
        return torch.tanh(logits) if self.config.output == "tanh" else torch.sigmoid(logits)

    def logits(self, x: Tensor) -> Tensor:
        """The head's output before its activation, ``(B, out_channels, H, W)``: what a
        numerically stable loss (``binary_cross_entropy_with_logits``) takes."""
        self._check_input(x)
        skips: list[Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def _round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (weights and biases; not batch-norm running stats).

    Args:
        model: any torch module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
