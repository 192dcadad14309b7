"""torchrun helpers (napari_unet.ddp): DDP training on 2 CPU processes with gloo."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

import napari_unet
from conftest import make_blobs
from napari_unet.checkpoint import load_model
from napari_unet.ddp import ProcessGroup, environment_group, rank_rng


def torchrun(
    tmp_path: Path, *args: str, nproc: int = 2, device: str = "cpu"
) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=NPROC -m napari_unet train ...`` on ``device``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    source = str(Path(napari_unet.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "napari_unet",
        "train",
        "--images",
        str(tmp_path / "images"),
        "--labels",
        str(tmp_path / "labels"),
        "--out",
        str(tmp_path / "model.pt"),
        "--preset",
        "tiny",
        "--device",
        device,
        "--steps-per-epoch",
        "4",
        "--batch-size",
        "4",
        "--patch-size",
        "32",
        "--lr",
        "3e-3",
        "--val-fraction",
        "0.25",
        "--early-stopping",
        "0",
        "--quiet",
        *args,
    ]
    result = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def write_blob_folders(tmp_path: Path) -> None:
    """Eight blob images and their labels in ``tmp_path/images`` and ``tmp_path/labels``."""
    images, labels = make_blobs(n=8, shape=(48, 48))
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for k, (image, label) in enumerate(zip(images, labels, strict=True)):
        tifffile.imwrite(tmp_path / "images" / f"blob{k}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"blob{k}.tif", label)


def test_torchrun_gloo_trains_writes_once_and_resumes(tmp_path) -> None:
    write_blob_folders(tmp_path)
    first = torchrun(tmp_path, "--epochs", "3")
    # Rank 0 alone writes: one model, one checkpoint, one log, one summary.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "model.ckpt.pt",
        "model.csv",
        "model.pt",
    ]
    assert first.stdout.count("model: ") == 1
    model = load_model(tmp_path / "model.pt", device="cpu")
    assert model.config.base_filters == 16 and model.metadata["epochs_run"] == 3

    torchrun(tmp_path, "--epochs", "5", "--resume", str(tmp_path / "model.ckpt.pt"))
    with open(tmp_path / "model.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5]
    losses = [float(row["train_loss"]) for row in rows]
    assert losses[-1] < losses[0]
    assert all(np.isfinite(float(row["val_loss"])) for row in rows)
    assert load_model(tmp_path / "model.pt", device="cpu").metadata["epochs_run"] == 5


def test_ranks_draw_their_own_patches(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert environment_group() == ProcessGroup(rank=1, local_rank=1, world_size=2)
    streams = []
    for rank in (0, 1):
        rng = np.random.default_rng(0)
        rank_rng(rng, 0, ProcessGroup(rank, rank, 2))
        streams.append(rng.integers(1 << 30, size=4).tolist())
    assert streams[0] != streams[1]
    alone = np.random.default_rng(0)
    rank_rng(alone, 0, ProcessGroup())  # a single process keeps the seeded stream
    assert (
        alone.integers(1 << 30, size=4).tolist()
        == np.random.default_rng(0).integers(1 << 30, size=4).tolist()
    )


def test_torchrun_trains_a_3d_model_and_every_rank_stops_on_the_time_budget(tmp_path) -> None:
    from napari_unet.synthetic import nuclei_volume

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for k in range(3):
        image, labels = nuclei_volume((8, 32, 32), 3, anisotropy=2.0, diameter=(8, 10), seed=k)
        tifffile.imwrite(tmp_path / "images" / f"vol{k}.tif", image.astype(np.uint16))
        tifffile.imwrite(tmp_path / "labels" / f"vol{k}.tif", labels)
    result = torchrun(
        tmp_path,
        *("--ndim", "3", "--base-filters", "4", "--depth", "2", "--patch-size", "16"),
        *("--batch-size", "1", "--epochs", "3", "--max-minutes", "1e-6"),
    )
    assert "stopped on the time budget" in result.stdout
    model = load_model(tmp_path / "model.pt", device="cpu")
    assert model.config.ndim == 3 and model.metadata["epochs_run"] == 1
    assert model.metadata["data"]["val_planes"] == 1  # one volume of three validates
