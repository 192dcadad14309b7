"""napari dock widgets of napari-unet: Train, Segment and Evaluate.

They are thin: each gathers its settings into the core's validated configs, runs
the core's generators in a napari ``thread_worker`` and turns the results into
layers, tables and plots. No segmentation or training maths lives here.
"""

from napari_unet._widgets._evaluate import EvaluateWidget
from napari_unet._widgets._segment import SegmentWidget
from napari_unet._widgets._train import TrainWidget

__all__ = ["EvaluateWidget", "SegmentWidget", "TrainWidget"]
