"""The honest protocol's fixed split of DSB 2018 ``train`` into "fit" and "selection".

Issue #20: epochs, candidate models and post-processing are chosen on images split off
``train`` ("selection"), never on ``val``, which is scored once at the end. The split is
by image, stratified by modality (:func:`napari_unet.modality.classify_modality`), seeded,
and committed as a file list (``benchmarks/dsb2018_train_split.tsv``: name, modality,
part) so that it is reproducible without this code.

Usage::

    python benchmarks/protocol_split.py draw          # (re)write the committed list
    python benchmarks/protocol_split.py link runs/split  # runs/split/{fit,selection}/...

``link`` makes folders of symbolic links to the images and labels of each part, which
every ``napari-unet`` command reads like any image folder.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from napari_unet.io import read_image
from napari_unet.modality import MODALITIES, classify_modality

ROOT = Path(__file__).resolve().parent.parent
#: The DSB 2018 split next to the checkout (or a worktree's main checkout), or DSB_DIR.
DATA = Path(
    os.environ.get(
        "DSB_DIR",
        next(
            (
                path
                for path in (
                    ROOT.parent / "shared/data/dsb2018",
                    ROOT.parents[1] / "shared/data/dsb2018",
                )
                if path.exists()
            ),
            ROOT.parent / "shared/data/dsb2018",
        ),
    )
)
SPLIT_FILE = ROOT / "benchmarks" / "dsb2018_train_split.tsv"
#: Share of each modality's training images set aside for selection, and the seed.
SELECTION_FRACTION = 0.18
SEED = 20


def draw_split(
    images: Path, fraction: float = SELECTION_FRACTION, seed: int = SEED
) -> list[tuple[str, str, str]]:
    """``(name, modality, part)`` for every image of ``images``, part "fit" or "selection".

    Per modality, ``round(n * fraction)`` images (at least one) chosen by a generator
    seeded with ``seed`` go to "selection", the rest to "fit".
    """
    names = sorted(path.name for path in images.iterdir() if path.suffix == ".png")
    modalities = [classify_modality(read_image(images / name)) for name in names]
    rng = np.random.default_rng(seed)
    selection: set[str] = set()
    for modality in MODALITIES:
        group = [name for name, kind in zip(names, modalities) if kind == modality]
        if group:
            count = max(1, round(len(group) * fraction))
            selection.update(rng.permutation(group)[:count].tolist())
    return [
        (name, kind, "selection" if name in selection else "fit")
        for name, kind in zip(names, modalities)
    ]


def read_split(path: Path = SPLIT_FILE) -> list[tuple[str, str, str]]:
    """The committed ``(name, modality, part)`` rows."""
    lines = path.read_text().splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines if line]  # type: ignore[misc]


def link(out: Path, rows: list[tuple[str, str, str]], data: Path = DATA) -> None:
    """``out/{fit,selection}/{images,labels}`` of symbolic links into ``data/train``."""
    for name, _, part in rows:
        for kind in ("images", "labels"):
            folder = out / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / name
            if not target.exists():
                target.symlink_to((data / "train" / kind / name).resolve())


def main() -> None:
    """Draw the split or link its folders."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["draw", "link"])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "runs" / "split")
    args = parser.parse_args()
    if args.action == "draw":
        rows = draw_split(DATA / "train" / "images")
        lines = ["name\tmodality\tpart", *("\t".join(row) for row in rows)]
        SPLIT_FILE.write_text("\n".join(lines) + "\n")
        for part in ("fit", "selection"):
            counts = {m: sum(r[1] == m and r[2] == part for r in rows) for m in MODALITIES}
            print(part, counts)
    else:
        link(args.out, read_split())


if __name__ == "__main__":
    main()
