"""Live training curves drawn with QPainter (no plotting library needed).

Two small panels: the training and validation loss, and the validation Dice
and IoU, one point per finished epoch. The widgets follow napari's theme
through the palette of the dock they sit in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPaintEvent, QPen, QPolygonF
from qtpy.QtWidgets import QHBoxLayout, QSizePolicy, QWidget


@dataclass
class Series:
    """One curve: a name, a colour and its (x, y) points."""

    name: str
    color: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)


class CurvePlot(QWidget):
    """A line plot of a few series against epochs.

    Parameters
    ----------
    title : str
        Drawn in the top-left corner.
    series : list of (name, colour)
        The curves, in legend order.
    y_range : (float, float) or None
        Fixed y-axis limits (metrics in [0, 1]); None scales to the data.
    """

    def __init__(
        self,
        title: str,
        series: list[tuple[str, str]],
        y_range: tuple[float, float] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.series = {name: Series(name, color) for name, color in series}
        self.y_range = y_range
        self.setMinimumSize(160, 130)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def add_point(self, name: str, x: float, y: float | None) -> None:
        """Append a point to series ``name`` (None or non-finite ``y`` is skipped)."""
        if y is None or not math.isfinite(y):
            return
        self.series[name].x.append(float(x))
        self.series[name].y.append(float(y))
        self.update()

    def clear(self) -> None:
        """Remove every point."""
        for series in self.series.values():
            series.x.clear()
            series.y.clear()
        self.update()

    def _limits(self) -> tuple[float, float, float, float]:
        xs = [x for s in self.series.values() for x in s.x]
        ys = [y for s in self.series.values() for y in s.y]
        x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if x1 <= x0:
            x1 = x0 + 1.0
        if self.y_range is not None:
            y0, y1 = self.y_range
        else:
            y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
            pad = (y1 - y0) * 0.1 or max(abs(y1) * 0.1, 1e-3)
            y0, y1 = max(0.0, y0 - pad) if y0 >= 0 else y0 - pad, y1 + pad
        return x0, x1, y0, y1

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        text_color = self.palette().windowText().color()
        metrics = painter.fontMetrics()
        line_h = metrics.height()
        x0, x1, y0, y1 = self._limits()
        y_labels = (_fmt(y0), _fmt(y1))
        margin = max(metrics.horizontalAdvance(text) for text in y_labels) + 8
        plot = QRectF(
            margin,
            line_h + 6,
            max(10.0, self.width() - margin - 8),
            max(10.0, self.height() - 2 * line_h - 14),
        )

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(
                plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                plot.bottom() - (y - y0) / (y1 - y0) * plot.height(),
            )

        # Frame, title, axis labels.
        grid = QColor(text_color)
        grid.setAlpha(70)
        painter.setPen(QPen(grid, 1))
        painter.drawRect(plot)
        for fraction in (0.25, 0.5, 0.75):
            y = plot.bottom() - fraction * plot.height()
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        painter.setPen(text_color)
        painter.drawText(QPointF(plot.left(), line_h), self.title)
        painter.drawText(
            QRectF(0, plot.top() - line_h / 2, plot.left() - 4, line_h),
            int(Qt.AlignRight | Qt.AlignVCenter),
            y_labels[1],
        )
        painter.drawText(
            QRectF(0, plot.bottom() - line_h / 2, plot.left() - 4, line_h),
            int(Qt.AlignRight | Qt.AlignVCenter),
            y_labels[0],
        )
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 2, plot.width(), line_h),
            int(Qt.AlignLeft | Qt.AlignTop),
            f"epoch {x0:g}",
        )
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 2, plot.width(), line_h),
            int(Qt.AlignRight | Qt.AlignTop),
            f"{x1:g}",
        )

        # Curves, with a dot per epoch so a single epoch is visible too.
        legend_x = plot.right() - 4
        for series in reversed(list(self.series.values())):
            color = QColor(series.color)
            painter.setPen(QPen(color, 2))
            points = [to_px(x, y) for x, y in zip(series.x, series.y, strict=True)]
            if len(points) > 1:
                painter.drawPolyline(QPolygonF(points))
            painter.setBrush(color)
            for point in points:
                painter.drawEllipse(point, 2.5, 2.5)
            label = series.name
            width = metrics.horizontalAdvance(label)
            painter.setPen(color)
            painter.drawText(QPointF(legend_x - width, line_h), label)
            legend_x -= width + 10
        painter.end()


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.2e}"


class TrainingCurves(QWidget):
    """Loss (train, validation) and validation Dice/IoU panels, side by side."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss = CurvePlot("loss", [("train", "#f0a030"), ("val", "#40a0f0")])
        self.quality = CurvePlot(
            "val quality", [("Dice", "#60c060"), ("IoU", "#c060c0")], y_range=(0.0, 1.0)
        )
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.loss)
        layout.addWidget(self.quality)

    def add_epoch(
        self,
        epoch: float,
        train_loss: float | None,
        val_loss: float | None,
        dice: float | None,
        iou: float | None,
    ) -> None:
        """Append one finished epoch to both panels."""
        self.loss.add_point("train", epoch, train_loss)
        self.loss.add_point("val", epoch, val_loss)
        self.quality.add_point("Dice", epoch, dice)
        self.quality.add_point("IoU", epoch, iou)

    def clear(self) -> None:
        """Start a new run."""
        self.loss.clear()
        self.quality.clear()
