"""The CUDA path of training and prediction: bf16 mixed precision, channels-last, NCCL.

Skipped where no CUDA device is present (CI has none). On a GPU machine,
``benchmarks/gpu_check.sh`` runs this file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_blobs
from napari_unet.checkpoint import load_model
from napari_unet.config import ModelConfig
from napari_unet.metrics import pixel_metrics
from napari_unet.model import build_model
from napari_unet.prediction import predict
from napari_unet.training import TrainConfig, train
from napari_unet.training_outputs import default_checkpoint_path
from napari_unet.training_run import TrainingRun
from test_ddp import torchrun, write_blob_folders
from test_training import small_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_training_step_runs_bf16_channels_last() -> None:
    config = ModelConfig.from_preset("tiny", base_filters=8, depth=2, in_channels=3)
    network = build_model(config).to("cuda")
    run = TrainingRun(
        TrainConfig(model=config, device="cuda"), config, network, torch.device("cuda"), 1
    )
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    seen: dict[str, object] = {}

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        seen["input_channels_last"] = inputs[0].is_contiguous(memory_format=torch.channels_last)
        seen["output_dtype"] = output.dtype

    first_conv.register_forward_hook(record)
    rng = np.random.default_rng(0)
    images = rng.random((4, 3, 32, 32), dtype=np.float32)
    targets = (rng.random((4, 1, 32, 32)) > 0.5).astype(np.float32)
    loss = run.train_step((images, targets, np.ones_like(targets)))
    assert math.isfinite(loss)
    assert seen == {"input_channels_last": True, "output_dtype": torch.bfloat16}
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert first_conv.weight.dtype == torch.float32  # master weights stay float32
    assert first_conv.weight.grad is not None and torch.isfinite(first_conv.weight.grad).all()


def test_cuda_model_learns_and_predicts_alike_on_cpu(blobs, tmp_path) -> None:
    result = train(
        *blobs, small_config(device="cuda", epochs=4, steps_per_epoch=6), out=tmp_path / "m.pt"
    )
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.history[-1]["val_dice"] > 0.5
    assert next(result.model.network.parameters()).device.type == "cuda"

    image, truth = make_blobs(n=1, shape=(64, 80), seed=5)
    on_gpu = predict(
        image[0], load_model(tmp_path / "m.pt", device="cuda"), return_probabilities=True
    )
    on_cpu = predict(
        image[0], load_model(tmp_path / "m.pt", device="cpu"), return_probabilities=True
    )
    # float32 inference on both (TF32 at most on the GPU): the same maps up to rounding.
    assert np.abs(on_gpu.probabilities - on_cpu.probabilities).max() < 1e-2
    assert pixel_metrics(on_cpu.labels > 0, on_gpu.labels > 0)["f1"] > 0.99
    assert pixel_metrics(truth[0] > 0, on_gpu.labels > 0)["f1"] > 0.5


@pytest.mark.parametrize(("first", "then"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_resume_across_devices(blobs, tmp_path, first, then) -> None:
    out = tmp_path / "m.pt"
    train(*blobs, small_config(device=first, epochs=2), out=out)
    resumed = train(
        *blobs, small_config(device=then, epochs=3), out=out, resume=default_checkpoint_path(out)
    )
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert all(math.isfinite(row["val_loss"]) for row in resumed.history)
    assert next(resumed.model.network.parameters()).device.type == then


def test_torchrun_nccl_on_one_gpu(tmp_path) -> None:
    write_blob_folders(tmp_path)
    torchrun(tmp_path, "--epochs", "2", nproc=1, device="cuda")
    model = load_model(tmp_path / "model.pt", device="cpu")
    assert model.metadata["epochs_run"] == 2
    assert all(math.isfinite(row["val_loss"]) for row in model.metadata["history"])
