"""The Segment widget against ``nu.segment`` on the bundled sample, in one napari process.

Issue #18 asks that segmenting the sample in the widget cost within 20% of
:func:`napari_unet.segment` in the same process. Both run on the ``nuclei`` sample with
the bundled model, after one warm-up each; the median of ``--repeats`` runs is reported:

* ``widget``: from :meth:`Start <napari_unet._widgets._segment.SegmentWidget.start>` to
  the labels layer shown (the worker thread, the layer update, Qt events);
* ``nu.segment (path)``: ``nu.segment(image, "default")``, the model named as a user
  names it in a script (the file read every call, as the core does);
* ``nu.segment (model)``: ``nu.segment(image, model)`` with the model loaded once.

Usage (a display is needed; a virtual one on a headless machine)::

    xvfb-run -a -s "-screen 0 1600x1200x24" python benchmarks/bench_segment_widget.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import napari
import torch
from qtpy.QtWidgets import QApplication

import napari_unet as nu
from napari_unet.checkpoint import load_model


def wait_until_done(widget: object) -> None:
    """Process Qt events until the widget's run has ended."""
    app = QApplication.instance()
    while widget.running:  # type: ignore[attr-defined]
        app.processEvents()
        time.sleep(0.002)
    app.processEvents()


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (both paths)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    viewer = napari.Viewer(show=True)
    image = viewer.open_sample("napari-unet", "nuclei")[0]
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.model.select(widget.model.DEFAULT)
    widget.image.set_layer(image)
    widget.device.setCurrentText("cpu")
    widget.update_state()

    def in_widget() -> None:
        widget.start()
        wait_until_done(widget)

    model = load_model("default", device="cpu")
    seconds = {
        "widget": median_seconds(in_widget, args.repeats),
        "nu.segment (path)": median_seconds(
            lambda: nu.segment(image.data, "default", device="cpu"), args.repeats
        ),
        "nu.segment (model)": median_seconds(
            lambda: nu.segment(image.data, model, device="cpu"), args.repeats
        ),
    }
    viewer.close()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"median of {args.repeats} after a warm-up, {args.threads} threads, load {load}")
    print(f"{'path':<22}{'seconds':>10}{'widget / path':>16}")
    for name, value in seconds.items():
        print(f"{name:<22}{value:>10.2f}{seconds['widget'] / value:>16.2f}")
    return seconds


if __name__ == "__main__":
    main()
