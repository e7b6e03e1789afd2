import multiprocessing

import pytest
import torch
import torch.nn as nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """A test that leaves worker processes behind fails here, instead of hanging the interpreter's
    exit (multiprocessing joins its children) long after every test has passed."""
    yield
    leftover = multiprocessing.active_children()
    for child in leftover:
        child.kill()
    assert not leftover, f"processes left running: {leftover}"


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
