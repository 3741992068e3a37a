"""The compact U-net: shapes, range, config validation, parameter count, dropout modes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional

from sar2ndvi.errors import InputError
from sar2ndvi.model import MAX_DEPTH, UNet, UNetConfig, count_parameters


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: threads only add contention (and spin-waits on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small(**kw) -> UNet:
    """A tiny seeded U-net (fast), with `kw` overriding the config."""
    torch.manual_seed(0)
    return UNet(UNetConfig(**{"width": 4, "depth": 2, **kw}))


def expected_parameters(cin: int, cout: int, width: int, depth: int, bn: bool) -> int:
    """Parameter count of the documented architecture, counted by hand.

    3x3 conv a->b: 9ab weights (+ b biases without BN); BN over b channels: 2b;
    2x2 transposed conv a->b: 4ab + b; 1x1 head: w0 * cout + cout.
    """

    extra = 2 if bn else 1  # per output channel of a 3x3 conv: BN scale and shift, or a bias

    def block(a: int, b: int) -> int:
        return 9 * a * b + extra * b + 9 * b * b + extra * b

    w = [width * 2**k for k in range(depth + 1)]
    total = block(cin, w[0])
    total += sum(block(w[k - 1], w[k]) for k in range(1, depth + 1))  # encoders + bottleneck
    for k in range(depth, 0, -1):  # decoder: up w[k] -> w[k-1], block 2*w[k-1] -> w[k-1]
        total += 4 * w[k] * w[k - 1] + w[k - 1] + block(2 * w[k - 1], w[k - 1])
    return total + w[0] * cout + cout


# --- shapes and range --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "shape"),
    [
        ({}, (2, 9, 16, 24)),
        ({"depth": 1, "out_channels": 3}, (1, 9, 6, 10)),
        ({"depth": 3, "in_channels": 4, "width": 2}, (3, 4, 8, 40)),
        ({"batch_norm": False, "dropout": 0.0}, (1, 9, 4, 12)),
    ],
)
def test_output_shape(kw, shape):
    model = small(**kw).eval()
    out = model(torch.randn(shape))
    assert out.shape == (shape[0], model.config.out_channels, shape[2], shape[3])
    assert out.dtype == torch.float32


@pytest.mark.parametrize("batch_norm", [True, False])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("scale", [1.0, 1e6, 1e12])
def test_output_is_ndvi_range_even_for_huge_inputs(batch_norm, train, scale):
    model = small(batch_norm=batch_norm).train(train)
    torch.manual_seed(1)
    x = torch.randn(2, 9, 16, 16) * scale
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()
    assert out.min() >= -1.0
    assert out.max() <= 1.0
    if scale == 1e12 and not (batch_norm and train):
        # nothing rescales the activations: most outputs saturate at exactly +-1
        assert (out.abs() == 1.0).float().mean() > 0.5


def test_matches_a_functional_reference():
    """Depth 1, no BN, no dropout: the documented wiring written out with torch.functional."""
    model = small(depth=1, width=3, batch_norm=False, dropout=0.0, in_channels=2).eval()
    torch.manual_seed(5)
    x = torch.randn(2, 2, 6, 8)
    enc = [m for m in model.encoders[0] if isinstance(m, nn.Conv2d)]
    bott = [m for m in model.bottleneck.modules() if isinstance(m, nn.Conv2d)]
    dec = [m for m in model.decoders[0].modules() if isinstance(m, nn.Conv2d)]
    up = model.ups[0]

    def convs(t, layers):
        for c in layers:
            t = functional.relu(functional.conv2d(t, c.weight, c.bias, padding=1))
        return t

    skip = convs(x, enc)
    low = convs(functional.max_pool2d(skip, 2), bott)
    upsampled = functional.conv_transpose2d(low, up.weight, up.bias, stride=2)
    y = convs(torch.cat([upsampled, skip], dim=1), dec)
    expected = torch.tanh(functional.conv2d(y, model.head.weight, model.head.bias))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_every_parameter_gets_a_gradient():
    model = small().train()
    torch.manual_seed(2)
    model(torch.randn(2, 9, 8, 8)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "multiple", "fix"),
    [
        ((1, 9, 60, 64), 8, "64 x 64"),
        ((1, 9, 64, 30), 8, "64 x 32"),
        ((1, 9, 4, 4), 8, "8 x 8"),
    ],
)
def test_odd_shapes_name_shape_and_multiple(shape, multiple, fix):
    model = UNet(width=2).eval()
    with pytest.raises(InputError) as info:
        model(torch.zeros(shape))
    msg = str(info.value)
    assert str(shape) in msg
    assert f"multiples of {multiple}" in msg
    assert fix in msg


def test_wrong_channel_count_names_expected_and_got():
    with pytest.raises(InputError, match=r"expects 9 input channels, got 4"):
        small()(torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize("x", [torch.zeros(9, 8, 8), torch.zeros(1, 1, 9, 8, 8)])
def test_wrong_rank_is_rejected(x):
    with pytest.raises(InputError, match="4-D tensor"):
        small()(x)


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("in_channels", 0),
        ("in_channels", 2.0),
        ("in_channels", True),
        ("out_channels", 0),
        ("width", 0),
        ("width", -3),
        ("depth", 0),
        ("depth", MAX_DEPTH + 1),
        ("depth", 2.5),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("dropout", float("nan")),
        ("dropout", "0.1"),
        ("batch_norm", 1),
        ("batch_norm", "yes"),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(InputError, match=rf"UNetConfig\.{field}\b"):
        UNetConfig(**{field: value})


def test_config_bounds_are_inclusive_where_documented():
    assert UNetConfig(depth=1).multiple == 2
    assert UNetConfig(depth=MAX_DEPTH).multiple == 2**MAX_DEPTH
    assert UNetConfig(dropout=0).dropout == 0.0
    assert isinstance(UNetConfig(dropout=0).dropout, float)
    assert UNetConfig().multiple == 8


def test_config_dict_round_trip_through_json():
    cfg = UNetConfig(in_channels=4, out_channels=2, width=7, depth=5, dropout=0.25,
                     batch_norm=False, output="sigmoid")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data == {"in_channels": 4, "out_channels": 2, "width": 7, "depth": 5,
                    "dropout": 0.25, "batch_norm": False, "output": "sigmoid"}
    assert UNetConfig.from_dict(data) == cfg
    assert UNetConfig.from_dict({"width": 8}) == UNetConfig(width=8)  # missing: defaults


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(InputError, match=r"unknown U-net config keys \['kernel'\]"):
        UNetConfig.from_dict({"width": 8, "kernel": 5})
    with pytest.raises(InputError, match="mapping"):
        UNetConfig.from_dict([("width", 8)])


def test_overrides_and_bad_arguments():
    model = UNet(UNetConfig(width=4), depth=1, dropout=0.0)
    assert model.config == UNetConfig(width=4, depth=1, dropout=0.0)
    assert UNet(width=3).config == UNetConfig(width=3)
    with pytest.raises(InputError, match="depht"):
        UNet(depht=2)
    with pytest.raises(InputError, match="UNetConfig"):
        UNet({"width": 4})


# --- parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cin", "cout", "width", "depth", "bn"),
    [(9, 1, 32, 3, True), (9, 1, 4, 2, True), (2, 3, 3, 1, False), (5, 1, 2, 4, False)],
)
def test_parameter_count_matches_the_formula(cin, cout, width, depth, bn):
    model = UNet(in_channels=cin, out_channels=cout, width=width, depth=depth, batch_norm=bn)
    assert count_parameters(model) == expected_parameters(cin, cout, width, depth, bn)


def test_default_parameter_count():
    # 1.93 M: the "compact" U-net of the paper's scale (see docs/model.md)
    assert count_parameters(UNet()) == 1_928_737


def test_parameter_count_grows_with_width_and_depth():
    counts = {(w, d): count_parameters(UNet(width=w, depth=d)) for w in (4, 8, 16)
              for d in (1, 2, 3)}
    for d in (1, 2, 3):
        # 3x3 convs dominate: doubling the width roughly quadruples the count
        assert 3.0 < counts[(8, d)] / counts[(4, d)] < 4.0
        assert 3.5 < counts[(16, d)] / counts[(8, d)] < 4.0
    for w in (4, 8, 16):
        # each extra level adds a block with 4x the bottleneck's weights
        assert 3.0 < counts[(w, 2)] / counts[(w, 1)] < 4.5
        assert 3.5 < counts[(w, 3)] / counts[(w, 2)] < 4.5


def test_count_trainable_only():
    model = small()
    total = count_parameters(model)
    model.head.weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - model.head.weight.numel()
    assert count_parameters(model) == total


# --- variants and modes ------------------------------------------------------------------


def test_batch_norm_off_has_no_norm_layers_and_uses_biases():
    model = small(batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    with_bn = small()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 2 * (2 * 2 + 1)
    three = [c for c in with_bn.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
    assert len(three) == 2 * (2 * 2 + 1)
    assert all(c.bias is None for c in three)


def test_dropout_only_in_bottleneck_and_decoder():
    model = small(dropout=0.3)
    drops = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 1 + model.config.depth
    assert all(n.startswith(("bottleneck", "decoders")) for n in drops)
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, nn.Dropout2d))
    assert not any(isinstance(m, nn.Dropout2d) for m in small(dropout=0.0).modules())


def test_dropout_train_mode_is_random_eval_mode_is_deterministic():
    model = small(dropout=0.5)
    torch.manual_seed(3)
    x = torch.randn(2, 9, 8, 8)
    with torch.no_grad():
        model.train()
        torch.manual_seed(10)
        a = model(x)
        b = model(x)  # different dropout masks
        torch.manual_seed(10)
        a_again = model(x)  # same seed, same masks, same bytes
        model.eval()
        torch.manual_seed(11)
        e1 = model(x)
        torch.rand(1000)  # eval does not depend on the RNG
        e2 = model(x)
    assert not torch.equal(a, b)
    assert torch.equal(a, a_again)
    assert torch.equal(e1, e2)


def test_no_dropout_train_mode_is_deterministic_and_draws_no_random_numbers():
    model = small(dropout=0.0, batch_norm=False).train()
    x = torch.randn(1, 9, 8, 8)
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_init_is_deterministic_given_the_seed():
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return UNet(width=4).state_dict()

    a, b, c = weights(4), weights(4), weights(5)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_he_init_keeps_activation_scale_without_batch_norm():
    """Without BN the signal should neither vanish nor explode through the encoder."""
    model = small(batch_norm=False, width=16, depth=3).eval()
    torch.manual_seed(6)
    x = torch.randn(4, 9, 32, 32)
    with torch.no_grad():
        h = x
        for enc in model.encoders:
            h = enc(h)
            rms = h.square().mean().sqrt().item()
            assert 0.3 < rms < 3.0
            h = model.pool(h)


def test_output_head_activations_share_the_logits():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    seg = UNet(in_channels=3, width=4, depth=2, output="sigmoid").eval()
    reg = UNet(in_channels=3, width=4, depth=2).eval()
    reg.load_state_dict(seg.state_dict())
    with torch.no_grad():
        logits = seg.logits(x)
        assert torch.allclose(seg(x), torch.sigmoid(logits))
        assert torch.allclose(reg(x), torch.tanh(logits))
        assert float(seg(x).min()) >= 0.0
    with pytest.raises(InputError, match="output must be one of"):
        UNetConfig(output="softmax")
