"""Draw the per-epoch history of `train` as a PNG for README: loss and accuracy, train
against validation, with Pillow (already a dependency; no plotting library needed).

`dvc plots show` draws the same curves interactively, but as HTML; a README needs a PNG.
Run  python docs/plot_curves.py metrics/train_history.tsv docs/curves.png
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SCALE = 2  # drawn at twice the size, then shrunk: smooth lines without anti-aliasing
PANEL_WIDTH, PANEL_HEIGHT = 440, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 32, 44
PANELS = (("Cross-entropy loss", "loss"), ("Accuracy", "accuracy"))  # (title, TSV column suffix)
COLOURS = {"train": (31, 119, 180), "validation": (255, 127, 14)}
AXIS, GRID, TEXT = (90, 90, 90), (225, 225, 225), (20, 20, 20)


def read_history(path: Path) -> dict[str, list[float]]:
    """The TSV written by `train`, one list of numbers per column."""
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    if not rows:
        raise ValueError(f"{path}: no epochs; run `dvc repro train` first")
    return {column: [float(row[column]) for row in rows] for column in rows[0]}


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round numbers (steps of 1, 2 or 5 times a power of ten) from low to high."""
    raw_step = (high - low) / count or abs(high) or 1.0
    power = 10 ** math.floor(math.log10(raw_step))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw_step)
    first = math.floor(low / step) * step
    steps = max(math.ceil((high - first) / step), 1)  # at least two ticks, even for one value
    return [first + i * step for i in range(steps + 1)]


def draw_panel(image: Image.Image, left: int, title: str, epochs: list[float], series: dict):
    """One chart at x offset `left`: a line and dots per series, axes, grid and legend."""
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12 * SCALE)
    x0, y0 = left + MARGIN_LEFT * SCALE, MARGIN_TOP * SCALE
    x1 = left + (PANEL_WIDTH - MARGIN_RIGHT) * SCALE
    y1 = (PANEL_HEIGHT - MARGIN_BOTTOM) * SCALE
    values = [value for line in series.values() for value in line]
    y_ticks = ticks(min(values), max(values))
    x_ticks = list(range(int(min(epochs)), int(max(epochs)) + 1))
    x_span = max(x_ticks[-1] - x_ticks[0], 1)

    def to_pixel(epoch: float, value: float) -> tuple[float, float]:
        x = x0 + (epoch - x_ticks[0]) / x_span * (x1 - x0)
        y = y1 - (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (y1 - y0)
        return x, y

    for value in y_ticks:
        y = to_pixel(x_ticks[0], value)[1]
        draw.line((x0, y, x1, y), fill=GRID, width=SCALE)
        draw.text((x0 - 6 * SCALE, y), f"{value:g}", fill=TEXT, font=font, anchor="rm")
    for epoch in x_ticks:
        x = to_pixel(epoch, y_ticks[0])[0]
        draw.line((x, y1, x, y1 + 4 * SCALE), fill=AXIS, width=SCALE)
        draw.text((x, y1 + 6 * SCALE), str(epoch), fill=TEXT, font=font, anchor="ma")
    draw.line((x0, y0, x0, y1, x1, y1), fill=AXIS, width=SCALE)
    draw.text(((x0 + x1) / 2, y1 + 24 * SCALE), "epoch", fill=TEXT, font=font, anchor="ma")
    draw.text((x0, 10 * SCALE), title, fill=TEXT, font=font, anchor="lt")
    for number, (name, line) in enumerate(series.items()):
        points = [to_pixel(epoch, value) for epoch, value in zip(epochs, line, strict=True)]
        draw.line(points, fill=COLOURS[name], width=2 * SCALE, joint="curve")
        for x, y in points:
            radius = 3 * SCALE
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=COLOURS[name])
        # Legend above the axes, right of the title, where no curve can hide it.
        legend_y = 16 * SCALE
        legend_x = x1 - (190 - 80 * number) * SCALE
        draw.line((legend_x, legend_y, legend_x + 20 * SCALE, legend_y), COLOURS[name], 2 * SCALE)
        draw.text((legend_x + 26 * SCALE, legend_y), name, fill=TEXT, font=font, anchor="lm")


def draw_curves(history: dict[str, list[float]]) -> Image.Image:
    """Loss (left) and accuracy (right) per epoch, train against validation."""
    image = Image.new("RGB", (2 * PANEL_WIDTH * SCALE, PANEL_HEIGHT * SCALE), "white")
    for panel, (title, metric) in enumerate(PANELS):
        series = {split: history[f"{split}_{metric}"] for split in ("train", "validation")}
        draw_panel(image, panel * PANEL_WIDTH * SCALE, title, history["epoch"], series)
    return image.resize((2 * PANEL_WIDTH, PANEL_HEIGHT), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path, help="the per-epoch TSV of `train`")
    parser.add_argument("output", type=Path, help="where to write the PNG")
    arguments = parser.parse_args()
    draw_curves(read_history(arguments.history)).save(arguments.output, optimize=True)


if __name__ == "__main__":
    main()
