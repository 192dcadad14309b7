"""The Segment widget against ``nu.segment`` on the bundled sample, in one napari process.

Issue #18 asks that segmenting the sample in the widget cost within 20% of
:func:`napari_unet.segment` in the same process. All run on the ``nuclei`` sample with
the bundled model on the CPU, after one warm-up each; the median of ``--repeats`` runs
is reported, in wall seconds and in this process's CPU seconds (all its threads; the
figure other jobs on a shared machine disturb least):

* ``widget, new layer``: from :meth:`Start <napari_unet._widgets._segment.SegmentWidget.start>`
  to the labels layer added and drawn (the worker thread, the layer, Qt events), with no
  earlier result in the viewer (it is deleted, untimed, before each run);
* ``widget, again``: the same with the previous run's unedited result in the viewer,
  which the run updates in place (see :class:`~napari_unet._widgets._outputs.ResultLayers`);
* ``nu.segment (model)``: ``nu.segment(image, model)`` with the model loaded once, as
  the widget's cache holds it (the like-for-like figure the ratios use);
* ``nu.segment (path)``: ``nu.segment(image, "default")``, the model named as a user
  names it in a script (the file read every call, as the core does).

The cases alternate within each repeat, so a change in the machine's load affects all
of them alike. The widget's runs are awaited the way napari's event loop waits: blocked
until the next Qt event, without polling.

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
from qtpy.QtCore import QEventLoop
from qtpy.QtWidgets import QApplication

import napari_unet as nu
from napari_unet.checkpoint import load_model


def wait_until_done(widget: object) -> None:
    """Handle Qt events, sleeping between them, until the widget's run has ended and
    its result is drawn."""
    app = QApplication.instance()
    while widget.running:  # type: ignore[attr-defined]
        app.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
    app.processEvents()


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call of ``run``."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (all paths)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    viewer = napari.Viewer(show=True)
    image = viewer.open_sample("napari-unet", "nuclei")[0]
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.model.select(widget.model.DEFAULT)
    widget.image.set_layer(image)
    widget.device.setCurrentText("cpu")
    widget.update_state()
    model = load_model("default", device="cpu")

    def in_widget() -> None:
        widget.start()
        wait_until_done(widget)

    def without_result() -> None:
        if widget.output is not None and widget.output in viewer.layers:
            viewer.layers.remove(widget.output)
            QApplication.instance().processEvents()

    cases: dict[str, tuple[Callable[[], None], Callable[[], object]]] = {
        "widget, new layer": (without_result, in_widget),
        "widget, again": (lambda: None, in_widget),
        "nu.segment (model)": (lambda: None, lambda: nu.segment(image.data, model, device="cpu")),
        "nu.segment (path)": (
            lambda: None,
            lambda: nu.segment(image.data, "default", device="cpu"),
        ),
    }
    load_before = os.getloadavg()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for repeat in range(args.repeats + 1):  # the first round is the warm-up
        for name, (prepare, run) in cases.items():
            prepare()
            seconds = timed(run)
            if repeat:
                times[name].append(seconds)
    load_after = os.getloadavg()
    viewer.close()

    medians = {
        name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in times.items()
    }
    wall_base, cpu_base = medians["nu.segment (model)"]
    load = " ".join(f"{value:.2f}" for value in (*load_before, *load_after))
    print(
        f"median of {args.repeats} after a warm-up, {args.threads} torch threads, "
        f"load average (1, 5, 15 min) before and after: {load}"
    )
    print(f"{'case':<22}{'wall s':>8}{'/ model':>9}{'CPU s':>8}{'/ model':>9}")
    for name, (wall, cpu) in medians.items():
        print(f"{name:<22}{wall:>8.2f}{wall / wall_base:>9.2f}{cpu:>8.2f}{cpu / cpu_base:>9.2f}")
    return medians


if __name__ == "__main__":
    main()
