"""Tests of napari_unet.checkpoint: round trips, safety against hostile files, atomic saves."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import napari_unet.checkpoint as checkpoint
from napari_unet.checkpoint import (
    TrainedModel,
    load_model,
    model_from_payload,
    model_payload,
    read_payload,
    save_model,
)
from napari_unet.config import ModelConfig, NormalizationConfig, PredictConfig
from napari_unet.errors import ModelFileError
from napari_unet.model import build_model


def trained_network(**overrides: object) -> torch.nn.Module:
    """A tiny network with non-default weights and BatchNorm statistics."""
    torch.manual_seed(0)
    settings = dict(preset="tiny", base_filters=4, depth=2, in_channels=1) | overrides
    net = build_model(**settings)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # moves the BatchNorm running statistics away from 0/1
            net(torch.rand(2, 1, 24, 24) * 3)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def outputs(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    net = trained_network(normalization=NormalizationConfig("minmax"), target="contour")
    metadata = {"epochs": 3, "val_loss": 0.25, "history": [{"epoch": 1, "loss": 0.5}], "note": "x"}
    path = save_model(tmp_path / "sub" / "model.pt", net, net.config, metadata)
    assert path == tmp_path / "sub" / "model.pt" and path.is_file()
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, TrainedModel)
    assert loaded.config == net.config
    assert loaded.metadata == metadata
    assert loaded.source == str(path) and loaded.device == torch.device("cpu")
    assert not loaded.network.training
    x = torch.rand(2, 1, 29, 31)
    assert torch.equal(outputs(loaded.network, x), outputs(net, x))


def test_unetpp_with_deep_supervision_round_trip(tmp_path: Path) -> None:
    net = trained_network(preset="unetpp", deep_supervision=True)
    loaded = TrainedModel(net, net.config).save(tmp_path / "pp.pt")
    x = torch.rand(1, 1, 20, 20)
    assert torch.equal(outputs(load_model(loaded, "cpu").network, x), outputs(net, x))


def test_half_precision_round_trip(tmp_path: Path) -> None:
    net = trained_network()
    full = save_model(tmp_path / "full.pt", net, net.config)
    half = save_model(tmp_path / "half.pt", net, net.config, half_precision=True)
    assert half.stat().st_size < full.stat().st_size
    stored = read_payload(half)["state_dict"]
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    full_state = read_payload(full)["state_dict"]
    weight_bytes = sum(v.nbytes for v in full_state.values() if v.is_floating_point())
    assert sum(v.nbytes for v in stored.values() if v.is_floating_point()) * 2 == weight_bytes
    loaded = load_model(half, device="cpu")
    # weights come back as float32 and the outputs are close to the original
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
    x = torch.rand(1, 1, 24, 24)
    assert torch.allclose(outputs(loaded.network, x), outputs(net, x), atol=1e-2)
    # integer buffers (BatchNorm batch counts) are kept exactly
    key = "encoders.0.1.num_batches_tracked"
    assert torch.equal(stored[key], net.state_dict()[key])
    # a loaded model re-saves at the precision of its file unless told otherwise
    assert loaded.half_precision and not load_model(full, device="cpu").half_precision
    again = read_payload(loaded.save(tmp_path / "again.pt"))["state_dict"]
    assert {v.dtype for v in again.values() if v.is_floating_point()} == {torch.float16}
    widened = read_payload(loaded.save(tmp_path / "wide.pt", half_precision=False))["state_dict"]
    assert {v.dtype for v in widened.values() if v.is_floating_point()} == {torch.float32}


def test_numpy_and_path_metadata_are_stored_as_plain_types(tmp_path: Path) -> None:
    net = trained_network()
    metadata = {
        "loss": np.float32(0.5),
        "best": np.int64(3),
        "curve": np.arange(3),
        "data": tmp_path,
    }
    loaded = load_model(save_model(tmp_path / "m.pt", net, net.config, metadata), "cpu")
    assert loaded.metadata == {"loss": 0.5, "best": 3, "curve": [0, 1, 2], "data": str(tmp_path)}
    with pytest.raises(TypeError, match="metadata.*object"):
        save_model(tmp_path / "bad.pt", net, net.config, {"thing": object()})
    assert not (tmp_path / "bad.pt").exists()


class Hostile:
    """Unpickling this runs code that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_hostile_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    net = trained_network()
    marker = tmp_path / "pwned"
    payload = model_payload(net, net.config)
    payload["metadata"] = {"evil": Hostile(marker)}
    path = tmp_path / "hostile.pt"
    torch.save(payload, path)
    # the file really is hostile: an unsafe load runs its code
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ModelFileError, match="refused"):
        load_model(path, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "text", "zip-without-data"])
def test_corrupt_files_raise_model_file_error(tmp_path: Path, damage: str) -> None:
    net = trained_network()
    good = save_model(tmp_path / "good.pt", net, net.config).read_bytes()
    path = tmp_path / "bad.pt"
    content = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "random": np.random.default_rng(0).bytes(2000),
        "text": b"hello, this is not a model\n",
        "zip-without-data": good[:64],
    }[damage]
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        load_model(path, device="cpu")


def test_wrong_content_raises_model_file_error(tmp_path: Path) -> None:
    net = trained_network()
    payload = model_payload(net, net.config)
    cases = {
        "other": {"weights": torch.zeros(3)},
        "newer": {**payload, "format_version": 999},
        "bad-config": {**payload, "config": {**payload["config"], "depth": 99}},
        "unknown-key": {**payload, "config": {**payload["config"], "colour": "red"}},
        "no-weights": {k: v for k, v in payload.items() if k != "state_dict"},
        "not-tensors": {**payload, "state_dict": {"a": 1}},
        "bad-metadata": {**payload, "metadata": [1, 2]},
        "mismatched": {**payload, "config": {**payload["config"], "base_filters": 8}},
    }
    messages = {
        "other": "not a napari-unet model",
        "newer": "newer",
        "bad-config": "invalid config",
        "unknown-key": "invalid config",
        "no-weights": "no valid weights",
        "not-tensors": "no valid weights",
        "bad-metadata": "metadata",
        "mismatched": "do not fit",
    }
    for name, content in cases.items():
        torch.save(content, tmp_path / f"{name}.pt")
        with pytest.raises(ModelFileError, match=messages[name]):
            load_model(tmp_path / f"{name}.pt", device="cpu")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_failed_save_leaves_no_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = trained_network()
    path = save_model(tmp_path / "model.pt", net, net.config, {"version": 1})
    before = path.read_bytes()
    real_save = torch.save

    def disk_full(obj: object, f: Path) -> None:
        real_save(obj, f)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # half-written, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_model(path, net, net.config, {"version": 2})
    with pytest.raises(OSError, match="No space"):
        save_model(tmp_path / "new.pt", net, net.config)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert load_model(path, "cpu").metadata == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_load_model_passes_trained_models_through() -> None:
    net = trained_network()
    model = TrainedModel(net, net.config, {"a": 1})
    assert load_model(model) is model
    assert load_model(model, device="cpu").device == torch.device("cpu")


def test_model_from_payload_in_memory() -> None:
    config = ModelConfig.from_preset("tiny", base_filters=2, depth=1, in_channels=2)
    net = build_model(config)
    model = model_from_payload(model_payload(net, config, {"k": [1, 2]}), device="cpu")
    assert model.source == "memory" and model.metadata == {"k": [1, 2]}
    assert model.config == config


def test_default_model_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    net = trained_network()
    shipped = save_model(tmp_path / "default_model.pt", net, net.config)
    monkeypatch.setattr(checkpoint, "default_model_path", lambda: shipped)
    assert load_model("default", "cpu").config == net.config
    monkeypatch.setattr(checkpoint, "default_model_path", lambda: tmp_path / "gone.pt")
    with pytest.raises(ModelFileError, match="bundled default model is missing"):
        load_model("default", "cpu")


def peak_rss_growth(action: Any) -> float:
    """Bytes by which the process's peak resident memory grew while ``action`` ran."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    action()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024.0


def test_tiny_file_with_a_huge_config_is_refused_without_allocating(tmp_path: Path) -> None:
    net = trained_network()
    payload = model_payload(net, net.config)
    payload["config"] = {**payload["config"], "base_filters": 256, "depth": 6}
    payload["state_dict"] = {"encoders.0.0.weight": torch.zeros(1)}
    path = tmp_path / "huge.pt"
    torch.save(payload, path)
    assert path.stat().st_size < 4000

    def load() -> None:
        with pytest.raises(ModelFileError, match="do not fit its config") as refused:
            load_model(path, device="cpu")
        assert len(str(refused.value).splitlines()) == 1

    assert peak_rss_growth(load) < 256 * 2**20  # building it would take over 30 GiB


def test_nan_and_infinite_weights_are_refused(tmp_path: Path) -> None:
    net = trained_network()
    for bad in (float("nan"), float("inf")):
        payload = model_payload(net, net.config)
        payload["state_dict"]["head.bias"] = torch.full_like(
            payload["state_dict"]["head.bias"], bad
        )
        torch.save(payload, tmp_path / "bad.pt")
        with pytest.raises(ModelFileError, match="head.bias holds NaN or infinite values"):
            load_model(tmp_path / "bad.pt", device="cpu")


def test_weights_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    net = trained_network()
    payload = model_payload(net, net.config)
    payload["state_dict"]["head.bias"] = payload["state_dict"]["head.bias"].long()
    torch.save(payload, tmp_path / "ints.pt")
    with pytest.raises(ModelFileError, match="head.bias is stored as torch.int64"):
        load_model(tmp_path / "ints.pt", device="cpu")


def test_model_file_zip_bomb_is_refused_unread(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 2**26)
    with pytest.raises(ModelFileError, match="would inflate to 64 MiB"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("kind", ["hostile", "mismatched", "empty", "folder", "device", "text"])
def test_model_file_messages_are_one_line_without_torch_advice(tmp_path: Path, kind: str) -> None:
    net = trained_network()
    path = tmp_path / "model.pt"
    if kind == "hostile":
        payload = model_payload(net, net.config)
        payload["metadata"] = {"evil": Hostile(tmp_path / "pwned")}
        torch.save(payload, path)
    elif kind == "mismatched":
        payload = model_payload(net, net.config)
        payload["config"] = {**payload["config"], "base_filters": 8}
        torch.save(payload, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        path.write_text("not a model\n")
    expected = {
        "hostile": "refused unread",
        "mismatched": "do not fit its config",
        "empty": "is empty",
        "folder": "is a folder",
        "device": "not a regular file",
        "text": "not a readable model file",
    }[kind]
    with pytest.raises(ModelFileError, match=expected) as refused:
        load_model(path, device="cpu")
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "weights_only" not in message
    assert "()" not in message and "does not exist" not in message


def test_3d_model_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", in_channels=1, ndim=3, anisotropy=2.0, depth=2)
    net = build_model(config).train()
    with torch.no_grad():
        net(torch.rand(2, 1, 6, 16, 16) * 3)  # BatchNorm3d statistics away from 0/1
    path = save_model(tmp_path / "m3d.pt", net.eval(), config, {"note": "3d"})
    loaded = load_model(path, device="cpu")
    assert loaded.config == config and loaded.config.ndim == 3
    x = torch.rand(1, 1, 5, 19, 23)
    assert torch.equal(outputs(loaded.network, x), outputs(net, x))


@pytest.mark.parametrize("target", ["contour", "distance"])
def test_format_1_distance_models_lose_the_seed_threshold_they_ignored(target: str) -> None:
    config = ModelConfig.from_preset("tiny", base_filters=2, depth=1, in_channels=1, target=target)
    tuned = {
        "threshold": 0.6,
        "seed_threshold": 0.4,
        "per_modality": {"H&E": {"seed_threshold": 0.5, "min_size": 30}},
    }
    payload = model_payload(build_model(config), config, {"postprocess": tuned})
    assert model_from_payload(payload).metadata["postprocess"] == tuned
    old = model_from_payload({**payload, "format_version": 1}).metadata["postprocess"]
    if target == "contour":
        assert old == tuned
    else:
        # Format 1 ignored a distance model's seed threshold; now it is the peak height.
        assert old == {"threshold": 0.6, "per_modality": {"H&E": {"min_size": 30}}}
        filled = PredictConfig().for_model(model_from_payload({**payload, "format_version": 1}))
        assert (filled.threshold, filled.seed_threshold) == (0.6, 0.2)
