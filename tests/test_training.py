"""Tests of the training engine napari_unet.training (and the losses it uses)."""

from __future__ import annotations

import csv
import dataclasses
import errno
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_blobs
from napari_unet.checkpoint import load_model
from napari_unet.config import ModelConfig, NormalizationConfig, PredictConfig
from napari_unet.data import load_pairs_from_folders, prepare_training_planes
from napari_unet.ddp import ProcessGroup
from napari_unet.errors import ConfigError, DataError, ModelFileError, TrainingDivergedError
from napari_unet.io import SAMPLES_DIR
from napari_unet.losses import compute_loss
from napari_unet.patches import PatchSampler
from napari_unet.prediction import predict
from napari_unet.synthetic import nuclei_volume
from napari_unet.training import (
    MIN_PATCHES_PER_EPOCH,
    TrainConfig,
    _patch_sampler,
    auto_steps_per_epoch,
    patch_shape,
    train,
    train_events,
)
from napari_unet.training_outputs import check_output_paths, default_checkpoint_path
from napari_unet.training_run import LOG_COLUMNS, TrainingRun


def small_config(**overrides) -> TrainConfig:
    """A network small enough for a test: 8 base filters, depth 2, one grey channel."""
    model = overrides.pop(
        "model", ModelConfig.from_preset("tiny", base_filters=8, depth=2, in_channels=1)
    )
    values = dict(
        model=model,
        epochs=2,
        batch_size=4,
        learning_rate=1e-2,
        patch_size=32,
        steps_per_epoch=3,
        device="cpu",
        val_fraction=0.25,
    )
    values.update(overrides)
    return TrainConfig(**values)


def weights_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.network.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_decreases_on_blobs(blobs) -> None:
    result = train(*blobs, small_config(epochs=4, steps_per_epoch=6))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert result.history[-1]["val_dice"] > 0.5
    assert not result.cancelled and not result.stopped_early


def test_events_and_result(blobs, tmp_path) -> None:
    events = train_events(
        *blobs, small_config(), out=tmp_path / "m.pt", log_csv=tmp_path / "log.csv"
    )
    kinds = []
    while True:
        try:
            event = next(events)
        except StopIteration as finished:
            result = finished.value
            break
        kinds.append(event.kind)
        if event.kind == "step":
            assert event.val_loss is None and event.steps_per_epoch == 3
        if event.kind == "epoch":
            assert set(event.val_metrics) == {"dice", "iou"} and event.learning_rate > 0
    assert kinds == ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch", "done"]
    assert result.model_path == tmp_path / "m.pt" and result.log_path == tmp_path / "log.csv"
    assert result.checkpoint_path == default_checkpoint_path(tmp_path / "m.pt")
    assert 1 <= result.best_epoch <= 2
    best = result.history[result.best_epoch - 1]  # the best epoch is the best Dice
    assert best["val_dice"] == max(row["val_dice"] for row in result.history)
    assert result.best_val_loss == best["val_loss"]

    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == LOG_COLUMNS and [int(r["epoch"]) for r in rows] == [1, 2]

    loaded = load_model(tmp_path / "m.pt", device="cpu")
    meta = loaded.metadata
    assert meta["best_epoch"] == result.best_epoch and meta["epochs_run"] == 2
    assert len(meta["history"]) == 2 and meta["elapsed_s"] > 0
    assert meta["data"]["train_planes"] == 3 and meta["data"]["val_planes"] == 1
    assert TrainConfig.from_dict(meta["train_config"]) == small_config()
    assert same_weights(weights_of(loaded), weights_of(result.model))
    # The in-memory result and the file predict the same.
    x = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        assert torch.allclose(loaded.network(x), result.model.network(x))


def test_loader_threads_train_the_same_model_for_any_count(blobs, tmp_path) -> None:
    one = train(*blobs, small_config(loader_threads=1))
    three = train(*blobs, small_config(loader_threads=3))
    assert same_weights(weights_of(one.model), weights_of(three.model))
    unthreaded = train(*blobs, small_config(loader_threads=0))
    assert not same_weights(weights_of(one.model), weights_of(unthreaded.model))
    # An interrupted threaded run resumes as if it never stopped.
    config = small_config(epochs=3, loader_threads=2)
    full = train(*blobs, config)
    train(*blobs, small_config(epochs=2, loader_threads=2), out=tmp_path / "m.pt")
    resumed = train(*blobs, config, resume=default_checkpoint_path(tmp_path / "m.pt"))
    assert same_weights(weights_of(resumed.model), weights_of(full.model))


def test_seeded_runs_are_reproducible(blobs) -> None:
    a = train(*blobs, small_config(epochs=1))
    b = train(*blobs, small_config(epochs=1))
    c = train(*blobs, small_config(epochs=1, seed=1))
    assert same_weights(weights_of(a.model), weights_of(b.model))
    assert not same_weights(weights_of(a.model), weights_of(c.model))


@pytest.mark.parametrize("schedule", ["plateau", "onecycle"])
def test_resume_continues_where_it_stopped(blobs, tmp_path, schedule) -> None:
    config = small_config(epochs=3, schedule=schedule, plateau_patience=1)
    full = train(*blobs, config)
    # Interrupt a run during its third epoch; its checkpoint holds the end of epoch 2.
    stop = threading.Event()
    for event in train_events(*blobs, config, out=tmp_path / "m.pt", stop=stop):
        if event.epoch == 3:
            stop.set()
    checkpoint = default_checkpoint_path(tmp_path / "m.pt")
    # The checkpoint is itself a loadable model file (of the last epoch's weights).
    assert load_model(checkpoint, device="cpu").metadata["epochs_run"] == 2
    resumed = train(*blobs, config, out=tmp_path / "m.pt", resume=checkpoint)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    # Weights, optimizer, schedule and random state were restored: the same as a run
    # that was never interrupted.
    for a, b in zip(resumed.history, full.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"])
    assert resumed.best_epoch == full.best_epoch
    assert load_model(tmp_path / "m.pt", device="cpu").metadata["epochs_run"] == 3


def test_resume_with_more_epochs_extends_a_finished_run(blobs, tmp_path) -> None:
    first = train(*blobs, small_config(epochs=2), out=tmp_path / "m.pt")
    resumed = train(
        *blobs, small_config(epochs=3), resume=default_checkpoint_path(tmp_path / "m.pt")
    )
    assert resumed.history[:2] == first.history and len(resumed.history) == 3


def test_resume_refuses_a_plain_model_file(blobs, tmp_path) -> None:
    train(*blobs, small_config(epochs=1), out=tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match="not a resume checkpoint"):
        train(*blobs, small_config(), resume=tmp_path / "m.pt")


def test_init_fine_tunes_an_existing_model(blobs, tmp_path) -> None:
    base = train(
        *blobs,
        small_config(
            epochs=1,
            model=ModelConfig.from_preset(
                "tiny", base_filters=8, depth=2, in_channels=1, target="contour"
            ),
        ),
        out=tmp_path / "a.pt",
    )
    # The init model's architecture and target win over config.model.
    tuned = train(*blobs, small_config(epochs=1), init=tmp_path / "a.pt")
    assert tuned.model.config == base.model.config
    assert tuned.model.metadata["init"] == str(tmp_path / "a.pt")
    assert not same_weights(weights_of(base.model), weights_of(tuned.model))


def batchnorm_statistics(model) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in weights_of(model).items() if k.endswith(("running_mean", "running_var"))
    }


def test_fine_tuning_keeps_the_init_models_tuned_post_processing(blobs, tmp_path) -> None:
    base = train(*blobs, small_config(epochs=1)).model
    base.metadata["postprocess"] = {"threshold": 0.7, "min_size": 9, "tuned_on": "blobs"}
    tuned = train(*blobs, small_config(epochs=1), init=base, out=tmp_path / "t.pt")
    for model in (tuned.model, load_model(tmp_path / "t.pt")):
        assert model.metadata["postprocess"]["threshold"] == 0.7
        assert model.metadata["postprocess"]["tuned_on"].startswith("blobs, for the model")
        assert PredictConfig().for_model(model).min_size == 9
    # A resumed fine-tune keeps them too; a model trained from scratch has none.
    resumed = train(*blobs, small_config(epochs=2), resume=tmp_path / "t.ckpt.pt")
    assert resumed.model.metadata["postprocess"]["threshold"] == 0.7
    assert resumed.model.metadata["init"] == base.source
    assert "postprocess" not in train(*blobs, small_config(epochs=1)).model.metadata


def test_fine_tuning_keeps_batchnorm_statistics_when_told(blobs) -> None:
    base = train(*blobs, small_config(epochs=1)).model
    kept = train(*blobs, small_config(epochs=1, freeze_batchnorm=True), init=base).model
    assert same_weights(batchnorm_statistics(base), batchnorm_statistics(kept))
    assert not same_weights(weights_of(base), weights_of(kept))  # the rest trains
    moved = train(*blobs, small_config(epochs=1), init=base).model  # the default: off
    assert not same_weights(batchnorm_statistics(base), batchnorm_statistics(moved))
    # From scratch the option changes nothing: the statistics are estimated.
    scratch = [
        train(*blobs, small_config(epochs=1, freeze_batchnorm=f)).model for f in (False, True)
    ]
    assert same_weights(*(weights_of(model) for model in scratch))


@pytest.mark.parametrize(
    ("freeze", "frozen"),
    [
        (None, ("encoders.", "bottleneck.")),  # the default
        ("encoder+bottleneck", ("encoders.", "bottleneck.")),
        ("encoder", ("encoders.",)),
        ("none", ()),
    ],
)
def test_fine_tuning_keeps_the_frozen_parts_only(blobs, freeze, frozen) -> None:
    base = train(*blobs, small_config(epochs=1)).model
    chosen = {} if freeze is None else {"freeze": freeze}
    tuned = train(*blobs, small_config(epochs=1, **chosen), init=base).model
    before, after = weights_of(base), weights_of(tuned)
    for name in before:
        kept = torch.equal(before[name], after[name])
        if name.startswith(frozen):  # weights and BatchNorm statistics alike
            assert kept, name
        elif name.startswith(("decoders.", "head.")) and not name.endswith("num_batches_tracked"):
            assert not kept, name
    if freeze == "none":  # from scratch nothing is frozen: the option changes nothing
        scratch = [
            train(*blobs, small_config(epochs=1, freeze=f)).model for f in ("none", "encoder")
        ]
        assert same_weights(*(weights_of(model) for model in scratch))


def test_a_resumed_fine_tune_keeps_the_parts_it_froze(blobs, tmp_path) -> None:
    base = train(*blobs, small_config(epochs=1)).model
    train(*blobs, small_config(epochs=1, freeze="encoder"), init=base, out=tmp_path / "t.pt")
    # Resumed with the default freeze (encoder+bottleneck): the bottleneck still trains.
    resumed = train(*blobs, small_config(epochs=2), resume=tmp_path / "t.ckpt.pt").model
    assert resumed.metadata["train_config"]["freeze"] == "encoder"
    before, after = weights_of(base), weights_of(resumed)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoders."))
    assert not torch.equal(before["bottleneck.0.weight"], after["bottleneck.0.weight"])


def test_a_fine_tune_replays_bundled_samples_and_training_from_scratch_does_not(
    blobs, tmp_path
) -> None:
    scratch = train(*blobs, small_config(epochs=1, val_fraction=0), out=tmp_path / "s.pt")
    own = scratch.model.metadata["data"]["train_planes"]
    assert "replayed_samples" not in scratch.model.metadata["data"]
    tuned = train(
        *blobs, small_config(epochs=1, val_fraction=0, replay_samples=2), init=scratch.model
    )
    assert tuned.model.metadata["data"]["replayed_samples"] == 2
    assert tuned.model.metadata["data"]["train_planes"] == own + 2
    plain = train(
        *blobs, small_config(epochs=1, val_fraction=0, replay_samples=0), init=scratch.model
    )
    assert "replayed_samples" not in plain.model.metadata["data"]
    assert not same_weights(weights_of(tuned.model), weights_of(plain.model))


def test_a_modality_balanced_fine_tune_draws_from_the_replayed_samples_too(blobs, tmp_path) -> None:
    scratch = train(*blobs, small_config(epochs=1, val_fraction=0), out=tmp_path / "s.pt")
    tuned = train(
        *blobs,
        small_config(epochs=1, val_fraction=0, replay_samples=2, sampling="modality"),
        init=scratch.model,
    )
    assert tuned.model.metadata["data"]["replayed_samples"] == 2
    assert tuned.model.metadata["data"]["train_planes"] == (
        scratch.model.metadata["data"]["train_planes"] + 2
    )


@pytest.mark.parametrize("sampling", ["area", "image"])
def test_colour_augmentation_keeps_the_chosen_sampling(sampling) -> None:
    # Two planes of different areas: "area" draws the larger one four times as often.
    planes = prepare_training_planes(
        [np.ones((32, 32), np.float32), np.ones((64, 64), np.float32)],
        [np.ones((32, 32), np.uint16), np.ones((64, 64), np.uint16)],
        1,
        NormalizationConfig(),
        "foreground",
    )
    config = small_config(sampling=sampling, colour_augment=True)
    sampler, _ = _patch_sampler(planes, config, config.model, ProcessGroup(), None)
    expected = [0.2, 0.8] if sampling == "area" else [0.5, 0.5]
    np.testing.assert_allclose(sampler.probabilities, expected)


def test_cancel_before_first_epoch_keeps_a_valid_model(blobs, tmp_path) -> None:
    stop = threading.Event()
    events = train_events(*blobs, small_config(epochs=5), out=tmp_path / "m.pt", stop=stop)
    steps = 0
    while True:
        try:
            event = next(events)
        except StopIteration as finished:
            result = finished.value
            break
        if event.kind == "step":
            steps += 1
            stop.set()
    assert steps == 1 and result.cancelled and result.best_epoch == 1
    assert load_model(tmp_path / "m.pt", device="cpu").config == result.model.config


def test_cancel_mid_run_keeps_the_best_epoch(blobs, tmp_path) -> None:
    stop = threading.Event()
    events = train_events(*blobs, small_config(epochs=5), out=tmp_path / "m.pt", stop=stop)
    for event in events:
        if event.kind == "step" and event.epoch == 2 and event.step == 2:
            stop.set()
    model = load_model(tmp_path / "m.pt", device="cpu")
    assert model.metadata["epochs_run"] == 1 and model.metadata["best_epoch"] == 1
    # Resuming from a cancelled run starts again after the last completed epoch.
    resumed = train(
        *blobs, small_config(epochs=2), resume=default_checkpoint_path(tmp_path / "m.pt")
    )
    assert [row["epoch"] for row in resumed.history] == [1, 2]


def test_a_time_budget_ends_the_run_with_a_validated_saved_model(blobs, tmp_path) -> None:
    # A budget spent before the first step ends: that step finishes, then one validation.
    config = small_config(epochs=50, max_minutes=1e-6)
    result = train(*blobs, config, out=tmp_path / "m.pt", log_csv=tmp_path / "log.csv")
    assert result.out_of_time and result.stop_reason == "time budget"
    assert not result.cancelled and not result.stopped_early
    assert [row["epoch"] for row in result.history] == [1] and result.best_epoch == 1
    saved = load_model(tmp_path / "m.pt", device="cpu")
    assert saved.metadata["stop_reason"] == "time budget" and saved.metadata["epochs_run"] == 1
    assert math.isfinite(saved.metadata["val_metrics"]["dice"])
    with open(tmp_path / "log.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 1
    # Without a budget the same run goes on (here: to its 2 epochs).
    assert train(*blobs, small_config()).stop_reason == "epochs"


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_a_per_step_schedule_runs_over_the_time_budget(blobs, schedule) -> None:
    # 30,000 steps would take the schedule far past the 6 s budget: it keeps pace with
    # the clock instead, and the rate has come down when the time is up. One epoch
    # outlasts the budget, so the run ends at a step (not in a validation that crossed
    # the deadline, after which no step paces the schedule).
    config = small_config(
        epochs=3, steps_per_epoch=10_000, schedule=schedule, max_minutes=0.1, min_lr=1e-6
    )
    rates = [e.learning_rate for e in train_events(*blobs, config) if e.kind == "step"]
    assert len(rates) >= 2
    assert rates[-1] <= 1e-3 * config.learning_rate
    assert max(rates) <= config.learning_rate * (1 + 1e-6)
    if schedule == "cosine":
        assert all(later <= earlier for earlier, later in zip(rates, rates[1:]))


def test_nan_loss_stops_and_keeps_the_last_good_model(blobs, tmp_path) -> None:
    raw = small_config(
        model=ModelConfig.from_preset(
            "tiny",
            base_filters=8,
            depth=2,
            in_channels=1,
            normalization=NormalizationConfig(mode="none"),
        )
    )
    good = train(*blobs, dataclasses.replace(raw, epochs=1), out=tmp_path / "m.pt")
    before = weights_of(load_model(tmp_path / "m.pt", device="cpu"))
    # Values near float32's limit overflow inside the network: the loss is not finite.
    huge = [image.astype(np.float32) * 1e36 for image in blobs[0]]
    with pytest.raises(TrainingDivergedError, match="NaN or infinite.*learning rate"):
        # No replayed samples: their finite patches would outnumber the blobs' huge ones.
        train(huge, blobs[1], raw, init=tmp_path / "m.pt", out=tmp_path / "m.pt", replay_samples=0)
    assert same_weights(weights_of(load_model(tmp_path / "m.pt", device="cpu")), before)
    assert good.best_epoch == 1


def test_early_stopping_ends_the_run(blobs) -> None:
    # A learning rate of ~0 cannot improve the validation loss for long.
    result = train(
        *blobs,
        small_config(
            epochs=30, learning_rate=1e-12, min_lr=0.0, early_stopping_patience=2, augment=False
        ),
    )
    assert result.stopped_early and len(result.history) < 30
    assert len(result.history) - result.best_epoch == 2


@pytest.mark.parametrize("target", ["contour", "distance"])
def test_two_channel_targets_train(blobs, target) -> None:
    config = small_config(
        epochs=1,
        loss="bce+dice",
        model=ModelConfig.from_preset(
            "tiny", base_filters=8, depth=2, in_channels=1, target=target
        ),
    )
    result = train(*blobs, config)
    assert result.model.config.out_channels == 2
    assert np.isfinite(result.history[0]["val_loss"])


def test_unetpp_deep_supervision_trains(blobs) -> None:
    model = ModelConfig.from_preset(
        "unetpp", base_filters=4, depth=2, in_channels=1, deep_supervision=True
    )
    result = train(*blobs, small_config(epochs=1, loss="dice", model=model))
    assert np.isfinite(result.history[0]["train_loss"])
    assert isinstance(result.model.network(torch.rand(1, 1, 32, 32)), torch.Tensor)


def test_stacks_and_images_smaller_than_the_patch() -> None:
    images, labels = make_blobs(n=3, shape=(24, 20))
    stack_images, stack_labels = [np.stack(images)], [np.stack(labels)]  # one (Z, H, W) stack
    result = train(stack_images, stack_labels, small_config(epochs=1, patch_size=48))
    assert result.model.metadata["data"]["train_planes"] == 2


def test_half_precision_file_is_smaller(blobs, tmp_path) -> None:
    train(*blobs, small_config(epochs=1), out=tmp_path / "full.pt")
    train(*blobs, small_config(epochs=1, half_precision=True), out=tmp_path / "half.pt")
    assert (tmp_path / "half.pt").stat().st_size < 0.7 * (tmp_path / "full.pt").stat().st_size
    assert load_model(tmp_path / "half.pt", device="cpu").config.in_channels == 1


def test_sparse_mode_ignores_unannotated_pixels(blobs) -> None:
    images, labels = blobs
    # Scribbles: a few object pixels (2) and background pixels (1); the rest unannotated (0).
    sparse = []
    for label in labels:
        scribble = np.zeros_like(label)
        scribble[::4][label[::4] > 0] = 2
        scribble[:, ::5][(label[:, ::5] == 0)] = 1
        sparse.append(scribble)
    planes = prepare_training_planes(images, sparse, 1, NormalizationConfig(), "contour", "sparse")
    for plane, scribble in zip(planes, sparse, strict=True):
        assert np.array_equal(plane.weights[0] > 0, scribble > 0)
        assert not plane.weights[1].any()  # scribbles say nothing about contours
    # Whole-plane patches with augmentation: the weights still mark exactly the scribbles.
    sampler = PatchSampler(planes, 56, "image", True, np.random.default_rng(0))
    image, targets, weights = sampler.batch(8)
    for k in range(8):
        assert weights[k, 0].sum() in {float((s > 0).sum()) for s in sparse}
    # No gradient reaches the network's output at an unannotated (or padded) pixel.
    logits = torch.randn(targets.shape, requires_grad=True)
    for loss in ("bce", "dice", "bce+dice"):
        logits.grad = None
        compute_loss(loss, logits, torch.from_numpy(targets), torch.from_numpy(weights)).backward()
        assert torch.all(logits.grad[torch.from_numpy(weights) == 0] == 0)
        assert torch.any(logits.grad[torch.from_numpy(weights) > 0] != 0)
    # Changing every unannotated pixel's prediction leaves the loss unchanged.
    w = torch.from_numpy(weights)
    other = torch.where(w > 0, logits, torch.randn_like(logits) * 10)
    for loss in ("bce", "dice", "bce+dice"):
        a = compute_loss(loss, logits, torch.from_numpy(targets), w)
        b = compute_loss(loss, other, torch.from_numpy(targets), w)
        assert torch.allclose(a, b)
    # End to end, a sparse run trains and scores only annotated pixels.
    result = train(images, sparse, small_config(epochs=1, label_mode="sparse"))
    assert np.isfinite(result.history[0]["val_loss"])


@pytest.mark.parametrize("explicit_validation", [True, False])
def test_contact_weight_weights_training_and_not_validation(blobs, explicit_validation) -> None:
    # A rate so small that the weights barely move: both runs see the same patches and
    # BatchNorm statistics, so only the loss weighting differs between them.
    images, labels = blobs
    validation = dict(val_images=images[:1], val_labels=labels[:1]) if explicit_validation else {}
    results = [
        train(
            images,
            labels,
            small_config(epochs=1, learning_rate=1e-12, min_lr=0.0, contact_weight=weight),
            **validation,
        )
        for weight in (1, 20)
    ]
    plain, weighted = (result.history[0] for result in results)
    assert weighted["train_loss"] > 1.05 * plain["train_loss"]  # gaps are hard pixels
    assert weighted["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-4)


def test_keyword_overrides_are_training_settings_only(blobs) -> None:
    with pytest.raises(ConfigError, match=r"Unknown training setting\(s\) \['lr'\]; valid"):
        train(*blobs, small_config(), lr=1e-3)
    with pytest.raises(ConfigError, match="epochs"):
        train(*blobs, small_config(), epochs=0)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=5.0)
    with pytest.raises(ConfigError, match="loss"):
        TrainConfig(loss="focal")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ConfigError, match="patch_size"):
        TrainConfig(patch_size=4)
    with pytest.raises(ConfigError, match="loader_threads"):
        TrainConfig(loader_threads=-1)
    for weight in (0, 101, 2.5, True):
        with pytest.raises(ConfigError, match="contact_weight"):
            TrainConfig(contact_weight=weight)
    with pytest.raises(ConfigError, match="sparse scribbles"):
        TrainConfig(contact_weight=10, label_mode="sparse")
    assert TrainConfig().resolved_loader_threads(torch.device("cpu")) == 0
    assert 1 <= TrainConfig().resolved_loader_threads(torch.device("cuda")) <= 4
    assert TrainConfig(loader_threads=2).resolved_loader_threads(torch.device("cpu")) == 2
    config = TrainConfig(epochs=3, schedule="cosine")
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_real_run_on_bundled_samples(tmp_path) -> None:
    images, labels = load_pairs_from_folders(SAMPLES_DIR / "images", SAMPLES_DIR / "labels")
    model = ModelConfig.from_preset("tiny", base_filters=8, in_channels=3)
    config = small_config(
        model=model, epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64, learning_rate=1e-3
    )
    result = train(
        images[:2],
        labels[:2],
        config,
        val_images=images[2:3],
        val_labels=labels[2:3],
        out=tmp_path / "dsb.pt",
    )
    assert result.model.metadata["data"]["validation"] == "explicit"
    assert load_model(tmp_path / "dsb.pt", device="cpu").config.in_channels == 3


def test_single_dask_image_validates_on_its_training_data(blobs) -> None:
    import dask.array as da

    image, label = da.from_array(blobs[0][0], chunks=24), da.from_array(blobs[1][0], chunks=24)
    result = train([image], [label], small_config(epochs=1))
    assert result.model.metadata["data"]["validation"] == "training data (no split)"
    assert result.model.metadata["data"]["train_planes"] == 1


# --- Damaged resume checkpoints: refused in full before any epoch, nothing written ---------


def _drop_optimizer(payload: dict) -> None:
    del payload["training_state"]["optimizer"]


def _epoch_text(payload: dict) -> None:
    payload["training_state"]["epoch"] = "abc"


def _rng_text(payload: dict) -> None:
    payload["training_state"]["rng"]["state"]["state"] = "not a number"


def _rng_other_generator(payload: dict) -> None:
    payload["training_state"]["rng"]["bit_generator"] = "MT19937"


def _best_weights_foreign(payload: dict) -> None:
    payload["training_state"]["best_state_dict"] = {"layer.weight": torch.zeros(3)}


def _best_weights_misshapen(payload: dict) -> None:
    best = payload["training_state"]["best_state_dict"]
    name = next(iter(best))
    best[name] = torch.zeros(best[name].numel() + 1)


def _weights_misshapen(payload: dict) -> None:
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = torch.zeros(2, 2)


def _optimizer_misshapen(payload: dict) -> None:
    payload["training_state"]["optimizer"]["state"][0]["exp_avg"] = torch.zeros(1)


def _scheduler_text(payload: dict) -> None:
    payload["training_state"]["scheduler"]["best"] = "abc"


def _history_cut(payload: dict) -> None:
    payload["training_state"]["history"] = []


def _config_out_of_range(payload: dict) -> None:
    payload["config"]["depth"] = 99


def _model_file_only(payload: dict) -> None:
    del payload["training_state"]


TAMPERINGS = {
    "no optimizer": (_drop_optimizer, "lacks optimizer"),
    "epoch text": (_epoch_text, "epoch is 'abc'"),
    "rng text": (_rng_text, "random state"),
    "rng of another generator": (_rng_other_generator, "random state"),
    "best weights of another network": (_best_weights_foreign, "best weights"),
    "best weights misshapen": (_best_weights_misshapen, "best weights"),
    "weights misshapen": (_weights_misshapen, "its weights"),
    "optimizer misshapen": (_optimizer_misshapen, "optimizer state of parameter 0"),
    "scheduler text": (_scheduler_text, "scheduler state"),
    "history cut": (_history_cut, "do not fit epoch 1"),
    "config out of range": (_config_out_of_range, "model config is invalid"),
    "a model file, not a checkpoint": (_model_file_only, "not a resume checkpoint.*init"),
}


@pytest.fixture(scope="module")
def intact_checkpoint(tmp_path_factory) -> Path:
    """The checkpoint of a one-epoch run on the blobs."""
    folder = tmp_path_factory.mktemp("intact")
    train(*make_blobs(), small_config(epochs=1), out=folder / "m.pt")
    return default_checkpoint_path(folder / "m.pt")


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_resume_refuses_a_damaged_checkpoint_before_any_epoch(
    blobs, intact_checkpoint, tmp_path, name
) -> None:
    tamper, message = TAMPERINGS[name]
    payload = torch.load(intact_checkpoint, weights_only=True)
    tamper(payload)
    damaged = tmp_path / "damaged.ckpt.pt"
    torch.save(payload, damaged)
    out = tmp_path / "run" / "m.pt"
    events = train_events(
        *blobs, small_config(epochs=2), resume=damaged, out=out, log_csv=out.with_suffix(".csv")
    )
    with pytest.raises(ModelFileError, match=message) as refused:
        next(events)  # refused before the first step event
    assert str(damaged) in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "run").exists()  # no model, log or new checkpoint


def test_an_intact_checkpoint_passes_the_checks(blobs, intact_checkpoint, tmp_path) -> None:
    # The same load-and-save as the damaged ones, without damage: it resumes.
    copy_path = tmp_path / "copy.ckpt.pt"
    torch.save(torch.load(intact_checkpoint, weights_only=True), copy_path)
    result = train(*blobs, small_config(epochs=2), resume=copy_path)
    assert [row["epoch"] for row in result.history] == [1, 2]


# --- Labels ---------------------------------------------------------------------------------


def test_negative_label_ids_are_refused_before_any_work(blobs, tmp_path) -> None:
    images, labels = blobs
    labels = [label.astype(np.int32) for label in labels]
    labels[2][labels[2] == 1] = -1
    events = train_events(images, labels, small_config(), out=tmp_path / "run" / "m.pt")
    with pytest.raises(DataError, match="pair 2: labels hold negative values.*relabel"):
        next(events)
    assert not (tmp_path / "run").exists()


def test_fractional_labels_are_still_refused(blobs) -> None:
    images, labels = blobs
    labels = [label.astype(np.float32) for label in labels]
    labels[0][0, 0] = 0.5
    with pytest.raises(DataError, match="pair 0: labels hold non-integer values"):
        train(images, labels, small_config())


# --- Output paths: checked before any work; a failing disk leaves the old model -------------


def read_only_folder(tmp_path: Path) -> Path:
    """A folder that really refuses new files: a chmod-ed one, or /proc where root writes
    through file modes."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return folder
    (folder / "probe").unlink()
    return Path("/proc")


def bad_outputs(tmp_path: Path) -> dict[str, tuple[dict, type[Exception], str]]:
    """Output arguments of train_events that cannot work, the error and what it says."""
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "log-folder").mkdir()
    model = tmp_path / "m.pt"
    return {
        "out is a folder": (dict(out=tmp_path / "folder.pt"), DataError, "out .* is a folder"),
        "parent is a file": (
            dict(out=tmp_path / "a-file" / "sub" / "m.pt"),
            DataError,
            "a-file' is a file",
        ),
        "read-only folder": (
            dict(out=read_only_folder(tmp_path) / "m.pt"),
            DataError,
            "is not writable",
        ),
        "log is a folder": (
            dict(out=model, log_csv=tmp_path / "log-folder"),
            DataError,
            "--log.* is a folder",
        ),
        "checkpoint in a file": (
            dict(out=model, checkpoint=tmp_path / "a-file" / "c.pt"),
            DataError,
            "checkpoint .*is a file",
        ),
        "log is the model": (dict(out=model, log_csv=model), ConfigError, "different files"),
    }


def test_bad_output_paths_are_refused_before_any_work(blobs, tmp_path) -> None:
    for name, (outputs, error, message) in bad_outputs(tmp_path).items():
        before = sorted(tmp_path.rglob("*"))
        events = train_events(*blobs, small_config(), **outputs)
        with pytest.raises(error, match=message) as refused:
            next(events)
        assert "\n" not in str(refused.value), name
        assert sorted(tmp_path.rglob("*")) == before, name  # the probe file is gone too


def test_missing_output_folders_are_checked_not_created(tmp_path) -> None:
    out = tmp_path / "new" / "deeper" / "m.pt"
    model, log, checkpoint = check_output_paths(out, tmp_path / "new" / "log.csv")
    assert (model, checkpoint) == (out, default_checkpoint_path(out))
    assert log == tmp_path / "new" / "log.csv" and not (tmp_path / "new").exists()


def test_a_failing_disk_keeps_the_previous_model(blobs, tmp_path) -> None:
    train(*blobs, small_config(epochs=1), out=tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()
    # A file-size limit makes every write past 4 KiB fail (EFBIG), as a full disk would.
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_blobs
from test_training import small_config
from napari_unet.training import train
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    train(*make_blobs(), small_config(epochs=1, seed=5), out={str(tmp_path / "m.pt")!r})
except OSError as error:
    print("OSError", error.errno)
"""
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert completed.stdout.split() == ["OSError", str(errno.EFBIG)], completed.stderr
    assert (tmp_path / "m.pt").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.ckpt.pt", "m.pt"]


def test_paths_are_read_and_non_images_refused(blobs, tmp_path) -> None:
    import tifffile

    images, labels = blobs
    paths = []
    for index, (image, label) in enumerate(zip(images, labels)):
        tifffile.imwrite(tmp_path / f"i{index}.tif", image)
        tifffile.imwrite(tmp_path / f"l{index}.tif", label)
        paths.append((str(tmp_path / f"i{index}.tif"), tmp_path / f"l{index}.tif"))
    from_paths = train([p for p, _ in paths], [q for _, q in paths], small_config(epochs=1))
    from_arrays = train(images, labels, small_config(epochs=1))
    assert same_weights(weights_of(from_paths.model), weights_of(from_arrays.model))
    with pytest.raises(DataError, match="training image 1 is a ragged nested list"):
        train([images[0], [[1, 2], [3]]], labels[:2], small_config(epochs=1))
    with pytest.raises(DataError, match="missing.tif' does not exist"):
        train(images[:1], [str(tmp_path / "missing.tif")], small_config(epochs=1))


def test_the_best_epoch_is_the_best_validation_dice_not_the_lowest_loss(blobs) -> None:
    config = small_config()
    run = TrainingRun.fresh(config, config.model, torch.device("cpu"), 3, np.random.default_rng(0))
    assert run.record_epoch(0.9, 0.50, {"dice": 0.82, "iou": 0.7})[1]
    assert not run.record_epoch(0.8, 0.40, {"dice": 0.80, "iou": 0.68})[1]  # lower loss
    assert run.best_epoch == 1 and run.best_metrics["dice"] == 0.82
    assert run.best_val_loss == 0.50 and run.epochs_since_best == 1
    assert run.record_epoch(0.7, 0.45, {"dice": 0.82, "iou": 0.7})[1]  # same Dice, lower loss
    assert not run.record_epoch(0.7, 0.30, {"dice": math.nan, "iou": math.nan})[1]
    assert run.best_epoch == 3


def test_an_epoch_draws_enough_patches_to_mean_something(blobs) -> None:
    one_image = ([blobs[0][0]], [blobs[1][0]])  # 48 x 48: one 48 px patch covers it
    config = small_config(patch_size=48, batch_size=4, steps_per_epoch=None, epochs=1)
    steps = [
        e.step
        for e in train_events(
            *one_image, config, val_images=[blobs[0][1]], val_labels=[blobs[1][1]]
        )
        if e.kind == "step"
    ]
    assert len(steps) == MIN_PATCHES_PER_EPOCH // 4 == auto_steps_per_epoch(1, 4)
    assert auto_steps_per_epoch(1000, 8) == 125  # large sets: their area once


def test_a_stop_during_validation_starts_no_further_step(blobs) -> None:
    stop = threading.Event()
    kinds = []
    run = train_events(*blobs, small_config(epochs=5), stop=stop)
    while True:
        try:
            event = next(run)
        except StopIteration as finished:
            result = finished.value
            break
        kinds.append(event.kind)
        if event.kind == "epoch":
            stop.set()  # as a Stop pressed while the first epoch was validated
    assert kinds == ["step"] * 3 + ["epoch", "done"]
    assert result.cancelled and len(result.history) == 1


# -- native 3D models ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def volumes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three small synthetic nuclei volumes (8 x 32 x 32, Z step twice the pixel)."""
    pairs = [
        nuclei_volume((8, 32, 32), 3, anisotropy=2.0, diameter=(8, 10), seed=seed)
        for seed in range(3)
    ]
    return [image for image, _ in pairs], [labels for _, labels in pairs]


def config_3d(**overrides) -> TrainConfig:
    """A 3D network small enough for a test, trained for a few steps on 16 px patches."""
    model = ModelConfig.from_preset(
        "tiny", ndim=3, anisotropy=2.0, base_filters=4, depth=2, in_channels=1, target="contour"
    )
    return small_config(**{"model": model, "batch_size": 2, "patch_size": 16, **overrides})


def test_a_3d_model_trains_on_volumes_validates_on_one_and_describes_itself(
    volumes, tmp_path
) -> None:
    result = train(*volumes, config_3d(epochs=1, steps_per_epoch=2), out=tmp_path / "m.pt")
    model = load_model(tmp_path / "m.pt", device="cpu")
    assert model.config.ndim == 3 and model.config.anisotropy == 2.0
    data = model.metadata["data"]
    assert data["ndim"] == 3 and data["train_planes"] == 2 and data["val_planes"] == 1
    assert math.isfinite(result.history[0]["val_loss"]) and math.isfinite(
        result.history[0]["val_dice"]
    )
    with torch.no_grad():
        logits = model.network(torch.zeros(1, 1, 8, 32, 32))
    assert logits.shape == (1, 2, 8, 32, 32)
    # The model file predicts a volume natively: labels of its shape, ids across Z.
    labels = predict(volumes[0][0], tmp_path / "m.pt", device="cpu", tile_size=32, overlap=8).labels
    assert labels.shape == (8, 32, 32) and np.issubdtype(labels.dtype, np.integer)
    # Patches: 16 x 16 in XY and, by default, the same extent in Z (8 planes at anisotropy
    # 2), at most the deepest volume; or patch_depth planes.
    planes = prepare_training_planes(
        volumes[0], volumes[1], 1, NormalizationConfig(), "contour", ndim=3
    )
    assert patch_shape(config_3d(patch_size=16), model.config, planes) == (8, 16, 16)
    assert patch_shape(config_3d(patch_size=64), model.config, planes) == (8, 64, 64)
    assert patch_shape(config_3d(patch_depth=3), model.config, planes) == (3, 16, 16)


def test_one_volume_validates_on_a_z_slab_and_scribbles_and_fine_tuning_work(
    volumes, tmp_path
) -> None:
    image, labels = volumes[0], volumes[1][0]
    result = train([image[0]], [labels], config_3d(epochs=1, steps_per_epoch=1, patch_depth=4))
    data = result.model.metadata["data"]
    assert data["validation"].startswith("held-out Z slab") and data["val_planes"] == 1
    # Scribbles (1 = background, 2 = object, 0 = unannotated), fine-tuning the 3D model.
    scribbles = np.zeros_like(labels)
    scribbles[labels > 0] = 2
    scribbles[:, :3] = 1
    tuned = train(
        [image[0]],
        [scribbles],
        config_3d(epochs=1, steps_per_epoch=1, label_mode="sparse", val_fraction=0.0),
        init=result.model,
    )
    assert tuned.model.config == result.model.config
    assert not same_weights(weights_of(result.model), weights_of(tuned.model))
    # An instance-label fine-tune too; the bundled 2D samples are not replayed into it.
    again = train([image[0]], [labels], config_3d(epochs=1, steps_per_epoch=1), init=result.model)
    assert "replayed_samples" not in again.model.metadata["data"]


def test_dimensions_that_do_not_fit_are_refused_before_any_work(blobs, volumes, tmp_path) -> None:
    two_d = train(*blobs, small_config(epochs=1, steps_per_epoch=1))
    with pytest.raises(ConfigError, match="is a 2D model .* trains a 3D model"):
        train(*volumes, config_3d(), init=two_d.model, out=tmp_path / "a.pt")
    with pytest.raises(ConfigError, match="patch_depth is for 3D models"):
        train(*blobs, small_config(patch_depth=4), out=tmp_path / "b.pt")
    for planes_only in ({"sampling": "modality"}, {"colour_augment": True}):
        with pytest.raises(ConfigError, match="are for 2D models"):
            train(*volumes, config_3d(**planes_only), out=tmp_path / "d.pt")
    with pytest.raises(DataError, match="not a \\(Z, Y, X\\) volume"):
        train(*blobs, config_3d(), out=tmp_path / "c.pt")
    assert not list(tmp_path.iterdir())
