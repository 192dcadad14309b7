"""Install a trained model as the bundled default, with post-processing tuned on validation data.

    python benchmarks/install_default_model.py runs/default_model/model.pt \
        --threshold 0.7 --seed-threshold 0.5 --core-threshold 0.85 --min-size 24

Writes ``src/napari_unet/samples/default_model.pt`` (float16 weights). The values come from
``napari-unet tune`` on the validation split; prediction uses them whenever the
caller leaves ``threshold``/``seed_threshold``/``core_threshold``/``min_size`` unset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_unet.checkpoint import default_model_path, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--seed-threshold", type=float, required=True)
    parser.add_argument("--core-threshold", type=float, default=0.0, help="0: no hysteresis")
    parser.add_argument("--min-size", type=int, required=True)
    parser.add_argument("--out", type=Path, default=default_model_path())
    args = parser.parse_args()

    model = load_model(args.model, device="cpu")
    model.metadata["postprocess"] = {
        "threshold": args.threshold,
        "seed_threshold": args.seed_threshold,
        "core_threshold": args.core_threshold,
        "min_size": args.min_size,
        "tuned_on": "DSB 2018 val split (napari-unet tune)",
    }
    path = model.save(args.out, half_precision=True)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
