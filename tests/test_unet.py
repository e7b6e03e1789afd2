"""U-Net baselines: Table 2 counts and any input size."""

import pytest
import torch

from ahnet import ConfigError, InputShapeError
from ahnet.models import UNet2D, UNet3D
from ahnet.summary import count_conv_layers, count_parameters


@pytest.mark.parametrize("build,convs,params", [
    (lambda: UNet2D(in_channels=3, out_channels=3), 15, 28_254_528),
    (lambda: UNet3D(in_channels=1, out_channels=3), 15, 5_298_768),
])
def test_table2_counts(build, convs, params):
    with torch.device("meta"):
        model = build()
    assert (count_conv_layers(model), count_parameters(model)) == (convs, params)


@torch.no_grad()
def test_any_size():
    assert UNet2D(out_channels=2, base_width=8).eval()(torch.randn(2, 3, 45, 30)).shape == (2, 2, 45, 30)
    assert UNet3D(out_channels=2, base_width=4).eval()(torch.randn(1, 1, 20, 24, 9)).shape == (1, 2, 20, 24, 9)


def test_gradients_and_errors():
    model = UNet3D(base_width=4)
    model(torch.randn(2, 1, 16, 16, 16)).mean().backward()
    assert all(p.grad is not None and p.grad.any() for p in model.parameters())
    with pytest.raises(InputShapeError, match="5D"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ConfigError):
        UNet2D(levels=1)
