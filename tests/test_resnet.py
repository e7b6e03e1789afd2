"""The 2D backbone matches torchvision's layout key for key, and loads its checkpoint files."""


import pytest
import torch

from ahnet import CheckpointError
from ahnet.models import ResNet, resnet18, resnet50
from ahnet.summary import count_parameters


def torchvision_layout(depth: int) -> dict[str, tuple[int, ...]]:
    """torchvision's resnet18/50 state_dict keys and shapes, written out from its definition."""
    bottleneck = depth == 50
    blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
    expansion = 4 if bottleneck else 1
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        keys.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                     f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    bn("bn1", 64)
    inplanes = 64
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            if bottleneck:
                convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            else:
                convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
            for i, shape in enumerate(convs, start=1):
                keys[f"{p}.conv{i}.weight"] = shape
                bn(f"{p}.bn{i}", shape[0])
            if b == 0 and (stage > 1 or inplanes != planes * expansion):
                keys[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    keys["fc.weight"] = (1000, 512 * expansion)
    keys["fc.bias"] = (1000,)
    return keys


@pytest.mark.parametrize("depth", [18, 50])
def test_state_dict_keys_and_shapes_equal_torchvision(depth):
    with torch.device("meta"):
        model = ResNet(f"resnet{depth}", num_classes=1000)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == torchvision_layout(depth)


@pytest.mark.parametrize("backbone,params", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                             ("resnet50", 25_557_032)])
def test_parameter_counts_equal_torchvision(backbone, params):
    with torch.device("meta"):
        assert count_parameters(ResNet(backbone, num_classes=1000)) == params


def test_pretrained_file_loads_into_encoder(tmp_path):
    source = ResNet("resnet18", num_classes=1000).eval()
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(source.state_dict(), path)  # what torchvision's hub cache holds
    encoder = resnet18(pretrained=path).eval()
    assert not hasattr(encoder, "fc")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x), source.features(x)["layer4"])


def test_old_checkpoint_without_batch_counter_loads(tmp_path):
    state = {k: v for k, v in ResNet("resnet18").state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pth")
    resnet18(pretrained=tmp_path / "old.pth")


def test_wrong_architecture_is_a_clear_error(tmp_path):
    torch.save(ResNet("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="not a torchvision resnet50 checkpoint"):
        resnet50(pretrained=tmp_path / "r18.pth")


def test_wrong_input_channels_is_a_clear_error(tmp_path):
    torch.save(ResNet("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="conv1.weight"):
        resnet18(pretrained=tmp_path / "r18.pth", in_channels=1)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x02K\x01."])
def test_unreadable_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pth"):
        resnet18(pretrained=path)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_cannot_execute_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload()}, path)
    with pytest.raises(CheckpointError):
        resnet18(pretrained=path)
    assert "must never run" not in capsys.readouterr().out


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        resnet50(pretrained=tmp_path / "absent.pth")
