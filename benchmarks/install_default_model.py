"""Install a trained model as the bundled default, with its tuned post-processing.

    python benchmarks/install_default_model.py runs/default_model/model.pt \
        --threshold 0.7 --seed-threshold 0.5 --core-threshold 0.85 --min-size 24

or, with the post-processing a ``napari-unet tune --out`` run stored (its per-modality
values too, with ``--per-modality``)::

    python benchmarks/install_default_model.py runs/m/model.pt --postprocess-from runs/m/tuned.pt

Writes ``src/napari_unet/samples/default_model.pt`` (float16 weights). The values come from
``napari-unet tune`` (on the "selection" split of ``benchmarks/protocol_split.py`` since
issue #20; on ``val`` before); prediction uses them whenever the caller leaves
``threshold``/``seed_threshold``/``core_threshold``/``min_size`` unset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_unet.checkpoint import default_model_path, load_model

SETTINGS = ("threshold", "seed_threshold", "core_threshold", "min_size")


def main() -> None:
    """Write the model with its post-processing as the bundled default."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument(
        "--postprocess-from", type=Path, help="copy the post-processing stored in this model file"
    )
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--seed-threshold", type=float)
    parser.add_argument("--core-threshold", type=float, default=0.0, help="0: no hysteresis")
    parser.add_argument("--min-size", type=int)
    parser.add_argument("--tuned-on", default="DSB 2018 val split (napari-unet tune)")
    parser.add_argument("--out", type=Path, default=default_model_path())
    args = parser.parse_args()

    model = load_model(args.model, device="cpu")
    if args.postprocess_from is not None:
        postprocess = load_model(args.postprocess_from, device="cpu").metadata["postprocess"]
    else:
        missing = [name for name in SETTINGS if getattr(args, name) is None]
        if missing:
            parser.error(f"give --postprocess-from or every setting (missing: {missing})")
        postprocess = {name: getattr(args, name) for name in SETTINGS}
        postprocess["tuned_on"] = args.tuned_on
    model.metadata["postprocess"] = postprocess
    path = model.save(args.out, half_precision=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
