"""The fast inference path (issue 6, Table 3) gives the plain modules' outputs within 1e-4, and is
derived from the modules themselves (issue 12): a module running other code falls back, never ignored."""

import pytest
import torch
from conftest import randomize_batchnorm

import ahnet.models.fast as fast
from ahnet.models import MCGCN, AHNet, UNet2D, UNet3D
from ahnet.models import ahnet as ahnet_module
from ahnet.models.ahnet import DecoderLevel, FastAHNet
from ahnet.models.fast import ChannelsLast, EvalOnly, NotCovered, fast_form, optimize_for_inference


def assert_same(fast_out: torch.Tensor, plain_out: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal within ``rtol`` of the output's largest magnitude."""
    assert fast_out.shape == plain_out.shape
    err = ((fast_out.float() - plain_out.float()).abs().max() / plain_out.float().abs().max()).item()
    assert err < rtol, f"relative error {err:.2e}"


def pair(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    plain = randomize_batchnorm(model).eval()
    return plain, optimize_for_inference(plain)


@pytest.mark.parametrize("preset", ["paper", "released"])
@pytest.mark.parametrize("backbone, out_channels, shape", [
    ("resnet50", 1, (1, 1, 32, 64, 32)),   # the paper's backbone, no padding
    ("resnet18", 3, (2, 1, 37, 30, 7)),    # basic blocks, a batch of two, odd sizes: padded and cropped
    ("resnet18", 2, (1, 2, 20, 45, 9)),    # two image channels
])
@torch.no_grad()
def test_fast_ahnet_equals_the_module(preset, backbone, out_channels, shape):
    plain, quick = pair(AHNet(out_channels, backbone, in_channels=shape[1], preset=preset))
    assert isinstance(quick, FastAHNet)
    x = torch.randn(shape)
    assert_same(quick(x), plain(x))


@pytest.mark.parametrize("preset", ["paper", "released"])
@torch.no_grad()
def test_chunks_of_slices_change_nothing(preset, monkeypatch):
    # A tiny budget: every stage runs slice by slice, the z parts with their halo slices, two volumes.
    monkeypatch.setattr(fast, "CPU_CHUNK_ELEMENTS", 2000)
    plain, quick = pair(AHNet(2, "resnet18", preset=preset))
    x = torch.randn(2, 1, 30, 32, 31)
    first = quick(x)
    assert_same(first, plain(x))
    assert torch.equal(quick(x), first)  # the second call reuses the kept tensors
    assert not quick.arena.lent and quick.arena.free


@pytest.mark.parametrize("pools", [(6, 4, 3), ()])
@torch.no_grad()
def test_other_pyramids(pools):
    # Kernels that do not divide each other are pooled from the full map; no pyramid at all works too.
    plain, quick = pair(AHNet(1, "resnet18", preset="released", pyramid_pools=pools))
    x = torch.randn(1, 1, 64, 32, 8)
    assert_same(quick(x), plain(x))


@torch.no_grad()
def test_preactivation_folds_into_a_1x1_convolution_for_every_sign_of_gamma():
    # BN-ReLU-conv1x1 as clamp-conv1x1: positive, negative and zero gammas (a zero-gamma channel is
    # the constant relu(beta)), including a channel whose constant is 0.
    bn, conv = torch.nn.BatchNorm3d(5).eval(), torch.nn.Conv3d(5, 3, 1)
    bn.weight.copy_(torch.tensor([1.3, -0.7, 0.0, 0.0, 2.0]))
    bn.bias.copy_(torch.tensor([0.4, 0.5, 0.8, -0.6, -1.0]))
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 5, 6, 7, 1) * 2
    expected = conv(torch.relu(bn(x)))[..., 0]
    quick_conv = fast.InPlaneConv(conv)
    clamp = fast.preactivation(bn, quick_conv)
    assert isinstance(clamp, fast.ClampReLU)
    slices = x[..., 0].contiguous(memory_format=torch.channels_last)
    assert_same(quick_conv(clamp(slices)), expected, rtol=1e-5)
    # A 3x3 conv as taps: the folded bias is summed only where a tap is inside the map.
    head = torch.nn.Conv3d(5, 1, (3, 3, 1), padding=(1, 1, 0))
    taps = fast.TapConv(head)
    clamp = fast.preactivation(bn, taps)
    assert isinstance(clamp, fast.ClampReLU)
    assert_same(taps(clamp(slices)), head(torch.relu(bn(x)))[..., 0], rtol=1e-5)
    # Any other kernel keeps the norm as it is: its zero padding must see relu(bn(x)) = 0.
    assert isinstance(fast.preactivation(bn, fast.InPlaneConv(torch.nn.Conv3d(5, 3, (3, 3, 1), padding=(1, 1, 0)))),
                      fast.NormReLU)


@pytest.mark.parametrize("volumes, slices, kernel, stride, padding", [
    (1, 32, 3, 2, 1), (2, 7, 3, 2, 1), (1, 5, 2, 2, 1), (2, 9, 3, 1, 1), (1, 1, 3, 2, 1), (1, 6, 5, 3, 2)])
def test_z_max_pooling_as_maxima_of_slices_equals_the_pooling_kernel(volumes, slices, kernel, stride, padding):
    x = torch.randn(volumes * slices, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    expected = fast.batch_from_zview(torch.nn.functional.max_pool2d(fast.batch_zview(x, volumes), (kernel, 1), (stride, 1),
                                                           (padding, 0)), 4, 5)
    assert torch.equal(fast.zmax_pool(x, volumes, kernel, stride, padding, fast.Arena().take), expected)


@torch.no_grad()
def test_the_module_is_left_untouched_and_still_trains():
    model = randomize_batchnorm(AHNet(1, "resnet18", preset="released"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimize_for_inference(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.enable_grad():
        model.train()(torch.randn(2, 1, 32, 32, 8)).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("build, shape", [
    (lambda: MCGCN(2, "resnet18", preset="released"), (2, 3, 64, 48)),
    (lambda: MCGCN(1, "resnet18", preset="paper"), (1, 3, 40, 56)),
    (lambda: UNet2D(3, 2, base_width=8), (2, 3, 48, 40)),
    (lambda: UNet3D(1, 2, base_width=4), (1, 1, 32, 24, 16)),
])
@torch.no_grad()
def test_other_networks_fold_batch_norms(build, shape):
    plain, quick = pair(build())
    assert isinstance(quick, ChannelsLast)
    x = torch.randn(shape)
    assert_same(quick(x), plain(x))


@torch.no_grad()
def test_bf16_autocast_runs_the_cuda_code_path_on_cpu():
    # On CUDA the predictor and `ahnet bench` run under bf16 autocast; the dtypes must flow through.
    plain, quick = pair(AHNet(2, "resnet18", preset="released"))
    x = torch.randn(1, 1, 32, 32, 8)
    with torch.autocast("cpu", torch.bfloat16):
        out, ref = quick(x), plain(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert_same(out, ref, rtol=0.1)


@pytest.mark.parametrize("overrides", [{"dense_layer": "isotropic"}, {"head_kernel": (1, 1, 3)}])
@torch.no_grad()
def test_what_the_fast_path_does_not_cover_keeps_the_modules_forward(overrides):
    # A configuration without a fast form predicts through the network's own forward (issue 12:
    # such a model used to train and then fail in `predict` with a bare ValueError).
    plain, quick = pair(AHNet(2, "resnet18", **overrides))
    assert isinstance(quick, EvalOnly)
    x = torch.randn(1, 1, 33, 30, 9)
    assert_same(quick(x), plain(x))


class ShiftedLevel(DecoderLevel):
    """A decoder level whose forward is changed (as an edit to the model would): +1 on its output."""

    def forward(self, x, skip):  # the signature before recomputation existed: it must still run
        return super().forward(x, skip) + 1


@torch.no_grad()
def test_a_module_running_another_forward_reaches_prediction(monkeypatch):
    # Issue 12: a change to the model's forward must not be silently ignored by the fast path. A
    # subclass overriding forward, or a patched forward, has no fast form: prediction falls back to the
    # module's own forward and gives its (changed) outputs.
    model = randomize_batchnorm(AHNet(2, "resnet18", preset="released")).eval()
    level = model.decoder[2]
    level.__class__ = ShiftedLevel
    with pytest.raises(NotCovered, match="ShiftedLevel.forward"):
        fast_form(level)
    plain, quick = pair(model)
    assert isinstance(quick, EvalOnly)
    x = torch.randn(1, 1, 32, 32, 8)
    assert_same(quick(x), plain(x))
    level.__class__ = DecoderLevel
    assert isinstance(optimize_for_inference(model), FastAHNet)
    # The same for a method patched on the class itself (the form was written for the old one).
    monkeypatch.setattr(ahnet_module.PyramidVolumetricPooling, "forward",
                        lambda self, h: torch.cat([h[:, :len(self.pools)] * 0, h], dim=1))
    assert isinstance(optimize_for_inference(model), EvalOnly)


@torch.no_grad()
def test_a_container_run_in_another_order_falls_back():
    # Fast forms read Sequential containers part by part; one whose forward is not its parts in order
    # is refused rather than read as if it were.
    class Reversed(torch.nn.Sequential):
        def forward(self, x):
            for module in reversed(self):
                x = module(x)
            return x

    model = AHNet(2, "resnet18", preset="paper")
    model.decoder[0].dense.__class__ = type("ReversedBlock", (Reversed,), {})
    assert isinstance(optimize_for_inference(model), EvalOnly)
