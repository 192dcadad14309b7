"""Seeded fuzzing of the model loaders: mutated model files, rdf.yaml files and packages.

Each mutated file is fed to :func:`napari_unet.checkpoint.load_model`. It may load
(a mutation can leave a valid file) or fail, but only with one of napari-unet's own
errors, within a few seconds: no other exception, no crash, no hang.
"""

from __future__ import annotations

import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from napari_unet.checkpoint import TrainedModel, load_model, model_payload, save_model
from napari_unet.config import ModelConfig
from napari_unet.errors import NapariUnetError
from napari_unet.model import build_model

#: Seconds one load may take before it counts as a hang.
HANG_SECONDS = 10


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in this (main) thread if the block runs longer than ``seconds``."""

    def expire(*_: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """``data`` with bytes flipped, cut off, inserted or removed (one kind, chosen at random)."""
    kind = rng.integers(4)
    position = int(rng.integers(len(data)))
    if kind == 0:
        damaged = bytearray(data)
        for where in rng.integers(len(data), size=int(rng.integers(1, 9))):
            damaged[where] ^= int(rng.integers(1, 256))
        return bytes(damaged)
    if kind == 1:
        return data[:position]
    if kind == 2:
        return data[:position] + rng.bytes(int(rng.integers(1, 64))) + data[position:]
    return data[:position] + data[position + int(rng.integers(1, 64)) :]


def load_outcome(path: Path, failures: list[str]) -> None:
    """Load ``path``; record anything but success or a napari-unet error in ``failures``."""
    try:
        with deadline(HANG_SECONDS):
            loaded = load_model(path, device="cpu")
        assert isinstance(loaded, TrainedModel)
    except NapariUnetError as error:
        if not str(error).strip():
            failures.append(f"{path.name}: empty message")
    except BaseException as error:  # everything else is a finding
        failures.append(f"{path.name}: {type(error).__name__}: {str(error)[:200]}")


def run_cases(cases: int, make: Callable[[int, np.random.Generator], Path], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    failures: list[str] = []
    for index in range(cases):
        load_outcome(make(index, rng), failures)
    return failures


@pytest.fixture(scope="module")
def tiny_model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real model file of a one-filter, depth-1 U-Net (a few kilobytes)."""
    torch.manual_seed(0)
    network = build_model(ModelConfig(in_channels=1, base_filters=1, depth=1))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return save_model(path, network, network.config, {"epochs": 1}).read_bytes()


def test_mutated_model_files(tiny_model_bytes: bytes, tmp_path: Path) -> None:
    def make(index: int, rng: np.random.Generator) -> Path:
        path = tmp_path / f"mutant{index}.pt"
        path.write_bytes(mutate(tiny_model_bytes, rng))
        return path

    failures = run_cases(1000, make, seed=19)
    assert not failures, failures[:10]


#: Values a fuzzed payload field may take.
ODD_VALUES: list[Any] = [
    None, True, -1, 0, 7, 10**12, 1.5, float("nan"), "", "unet", "x" * 300, [], [1, 2], {},
    {"a": 1}, torch.zeros(0), torch.zeros(2, 2), torch.tensor(float("inf")),
]  # fmt: skip


def test_mutated_model_payloads(tmp_path: Path) -> None:
    """Structured mutations: fields of the payload, its config and its weights replaced."""
    torch.manual_seed(0)
    network = build_model(ModelConfig(in_channels=1, base_filters=1, depth=1))

    def make(index: int, rng: np.random.Generator) -> Path:
        payload = model_payload(network, network.config)
        part = ("top", "config", "state")[int(rng.integers(3))]
        value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        if part == "top":
            payload[("format", "format_version", "config", "state_dict", "metadata")[index % 5]] = (
                value
            )
        elif part == "config":
            keys = [*payload["config"], "normalization.mode", "unknown"]
            key = keys[int(rng.integers(len(keys)))]
            if key == "normalization.mode":
                payload["config"]["normalization"]["mode"] = value
            else:
                payload["config"][key] = value
        else:
            state = payload["state_dict"]
            name = list(state)[int(rng.integers(len(state)))]
            if isinstance(value, torch.Tensor):
                state[name] = value
            elif rng.random() < 0.5:
                del state[name]
            else:
                state[name] = state[name].to(
                    (torch.float16, torch.int32, torch.bool, torch.complex64)[int(rng.integers(4))]
                )
        path = tmp_path / f"payload{index}.pt"
        torch.save(payload, path)
        return path

    failures = run_cases(200, make, seed=16)
    assert not failures, failures[:10]


@pytest.fixture(scope="module")
def package_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bioimage.io package of a depth-1, two-filter U-Net, unpacked."""
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    from napari_unet.bioimageio.writing import export_bioimageio

    torch.manual_seed(0)
    config = ModelConfig(in_channels=1, base_filters=2, depth=1)
    model = TrainedModel(build_model(config).eval(), config)
    root = tmp_path_factory.mktemp("package")
    sample = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    package = export_bioimageio(model, root / "model.zip", sample=sample, test=False)
    folder = root / "files"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    return folder


def yaml_mutation(text: str, rng: np.random.Generator) -> str:
    """A line of ``text`` removed, duplicated or given an odd value, or its bytes damaged."""
    lines = text.splitlines()
    index = int(rng.integers(len(lines)))
    kind = int(rng.integers(5))
    if kind == 0:
        del lines[index]
    elif kind == 1:
        lines.insert(index, lines[index])
    elif kind == 2 and ":" in lines[index]:
        key = lines[index].split(":", 1)[0]
        odd = ("", " null", " -1", " [1, [2]]", " {a: *missing}", " /etc/passwd", " ../x.pt",
               " https://example.com/w", " &x [*x]", " !!python/object:os.system {}")  # fmt: skip
        lines[index] = key + ":" + odd[int(rng.integers(len(odd)))]
    else:
        return mutate(text.encode(), rng).decode("utf-8", "replace")
    return "\n".join(lines) + "\n"


def test_mutated_rdf_yaml_files(package_folder: Path, tmp_path: Path) -> None:
    text = (package_folder / "rdf.yaml").read_text()
    folder = tmp_path / "package"
    folder.mkdir()
    for file in package_folder.iterdir():
        if file.name != "rdf.yaml":
            (folder / file.name).symlink_to(file)

    def make(index: int, rng: np.random.Generator) -> Path:
        path = folder / f"mutant{index}.rdf.yaml"
        path.write_text(yaml_mutation(text, rng))
        return path

    failures = run_cases(150, make, seed=7)
    assert not failures, failures[:10]


def test_mutated_package_archives(package_folder: Path, tmp_path: Path) -> None:
    """Zip archives with damaged bytes, or with one member replaced by a damaged copy."""
    members = {file.name: file.read_bytes() for file in package_folder.iterdir()}
    archive = tmp_path / "base.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in members.items():
            target.writestr(name, data)
    base = archive.read_bytes()

    def make(index: int, rng: np.random.Generator) -> Path:
        path = tmp_path / f"mutant{index}.zip"
        if index % 2:
            path.write_bytes(mutate(base, rng))
            return path
        damaged = sorted(members)[int(rng.integers(len(members)))]
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
            for name, data in members.items():
                target.writestr(name, mutate(data, rng) if name == damaged else data)
        return path

    failures = run_cases(100, make, seed=9)
    assert not failures, failures[:10]
