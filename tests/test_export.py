"""`ahnet export` (issue 12): TorchScript and ONNX files that give the checkpoint's outputs."""

import numpy as np
import pytest
import torch

from ahnet import ConfigError
from ahnet.cli import main
from ahnet.export import export_model
from ahnet.models.factory import model_from_meta
from ahnet.training.checkpoint import load_checkpoint

from test_predict import train_tiny
from test_training import make_learnable_dataset


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_learnable_dataset(root / "data")
    return {model: train_tiny(data, root / model, model=model) for model in ("ahnet", "mc-gcn", "3d-unet")}


def checkpoint_model(path):
    saved = load_checkpoint(path, kind="train")
    model = model_from_meta(saved["model_meta"])
    model.load_state_dict(saved["model"])
    return model.eval()


@pytest.mark.parametrize("network, size, shape", [
    ("ahnet", "37x30x11", (2, 1, 37, 30, 11)),    # an odd size: padded and cropped inside
    ("mc-gcn", "33x29", (2, 3, 33, 29)),          # three slices as channels
    ("3d-unet", None, (2, 1, 32, 32, 8)),         # the training patch by default
])
def test_torchscript_export_gives_the_checkpoints_outputs(runs, tmp_path, network, size, shape, capsys):
    out = tmp_path / f"{network}.pt"
    argv = ["export", str(runs[network]), "--format", "torchscript", "-o", str(out), "--batch", "2"]
    assert main(argv + (["--size", size] if size else [])) == 0
    assert "largest difference to the checkpoint" in capsys.readouterr().out
    loaded = torch.jit.load(str(out))
    x = torch.randn(shape)
    with torch.no_grad():
        expected = checkpoint_model(runs[network])(x)
        got = loaded(x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4
    assert not list(tmp_path.glob("*.tmp"))


def test_onnx_export_runs_in_onnxruntime(runs, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "ahnet.onnx"
    result = export_model(runs["ahnet"], "onnx", out, size=(35, 33, 9))
    assert result["input_shape"] == [1, 1, 35, 33, 9] and result["max_relative_difference"] < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 1, 35, 33, 9)).astype(np.float32)
    with torch.no_grad():
        expected = checkpoint_model(runs["ahnet"])(torch.from_numpy(x)).numpy()
    got = session.run(None, {"image": x})[0]
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.parametrize("kwargs, message", [
    ({"fmt": "tflite"}, "--format must be one of torchscript, onnx"),
    ({"fmt": "torchscript", "size": (32, 32)}, "--size needs 3 positive sizes"),
    ({"fmt": "torchscript", "batch": 0}, "--batch must be >= 1"),
])
def test_bad_export_options_are_clear_errors(runs, tmp_path, kwargs, message):
    fmt = kwargs.pop("fmt")
    with pytest.raises(ConfigError, match=message):
        export_model(runs["ahnet"], fmt, tmp_path / "m.pt", **kwargs)
    assert not list(tmp_path.iterdir())


def test_export_cli_rejects_a_malformed_size(runs, tmp_path, capsys):
    assert main(["export", str(runs["ahnet"]), "--format", "torchscript", "-o", str(tmp_path / "m.pt"),
                 "--size", "32xa"]) == 2
    assert "--size must be like 96x96x32" in capsys.readouterr().err
