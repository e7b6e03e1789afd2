import pytest
import torch
import torch.nn as nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (negative gammas too), so
    that a transfer that forgets running statistics, or gets an order wrong, shows up."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-1, 1)
                m.running_mean.uniform_(-2, 2)
                m.running_var.uniform_(0.2, 3)
                m.num_batches_tracked.fill_(7)
    return model
