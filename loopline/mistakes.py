"""The mistakes grid of `evaluate`: the most confident wrong predictions on the test set,
kept a batch at a time (a few dozen images, never the test set) and drawn as a PNG that
`dvc plots show` displays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from loopline.files import atomic_output

# The mistakes grid. Presentation only, so constants rather than params: changing them
# must not invalidate an experiment.
MISTAKES_SHOWN = 24
GRID_COLUMNS = 6
# Each image is shown in a square of this many pixels: an MNIST pixel becomes a crisp 4x4
# block (28 -> 112); a smaller image is enlarged by a whole factor, a larger one shrunk.
IMAGE_BOX = 112
TILE_WIDTH, TILE_HEIGHT = 160, 140  # wide enough for "true 7 / predicted 2 (0.99)"
NAME_CHARACTERS = 12  # longer class names are cut short in the captions
HEADER_HEIGHT = 28
FONT_SIZE = 12


def most_confident_mistakes(
    labels: np.ndarray, probabilities: np.ndarray, count: int
) -> np.ndarray:
    """Indices of up to `count` wrong predictions, the most confident first."""
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    confidence = probabilities[wrong].max(axis=1)
    # Stable: equal confidences keep test-set order, so the grid is the same every run.
    return wrong[np.argsort(-confidence, kind="stable")[:count]]


class Mistakes:
    """The `count` most confident wrong predictions of the batches added so far, in the
    order most_confident_mistakes gives over all of them, with their images: all the grid
    needs, holding `count` images rather than the test set."""

    def __init__(self, shape: tuple[int, ...], count: int = MISTAKES_SHOWN) -> None:
        self.count, self.shape = count, shape
        self.seen = self.wrong = 0  # images added, wrong predictions among them
        self.indices = np.zeros(0, np.int64)  # in the test set
        self.images = np.zeros((0, *shape), np.uint8)
        self.labels = np.zeros(0, np.int64)
        self.probabilities = np.zeros((0, 0), np.float32)

    def add(self, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> None:
        """The next batch of test images, their labels and predicted probabilities."""
        wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
        self.wrong += len(wrong)
        if len(self.probabilities) == 0:
            self.probabilities = np.zeros((0, probabilities.shape[1]), probabilities.dtype)
        self.indices = np.concatenate([self.indices, self.seen + wrong])
        self.images = np.concatenate([self.images, images[wrong]])
        self.labels = np.concatenate([self.labels, labels[wrong]])
        self.probabilities = np.concatenate([self.probabilities, probabilities[wrong]])
        self.seen += len(labels)
        # The most confident first, equal confidences in test-set order.
        kept = np.lexsort((self.indices, -self.probabilities.max(axis=1)))[: self.count]
        self.indices, self.images = self.indices[kept], self.images[kept]
        self.labels, self.probabilities = self.labels[kept], self.probabilities[kept]


def shown_image(image: np.ndarray, digits: bool) -> Image.Image:
    """`image` as the grid shows it, IMAGE_BOX pixels on its longer side: enlarged by a whole
    factor without smoothing (NEAREST keeps the pixels visible), or shrunk smoothly. Digits
    are drawn dark on white paper, as people write them; other images as they are."""
    shown = Image.fromarray(255 - image if digits else image)
    longer = max(image.shape[:2])
    scale = IMAGE_BOX // longer if longer <= IMAGE_BOX else IMAGE_BOX / longer
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    resampling = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    return shown.resize(size, resampling)


def _name(classes: list[str], index: int) -> str:
    name = classes[index]
    return name if len(name) <= NAME_CHARACTERS else name[: NAME_CHARACTERS - 3] + "..."


def draw_mistakes(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    digits: bool = True,
    count: int = MISTAKES_SHOWN,
) -> Image.Image:
    """A grid of the `count` most confident mistakes of the whole test set given at once."""
    mistakes = Mistakes(images.shape[1:], count)
    mistakes.add(images, labels, probabilities)
    return draw_grid(mistakes, classes, digits)


def draw_grid(mistakes: Mistakes, classes: list[str], digits: bool = True) -> Image.Image:
    """A grid of the most confident mistakes: each image, its true and predicted class.
    Colour images make a colour grid."""
    rows = -(-len(mistakes.labels) // GRID_COLUMNS)
    colour = len(mistakes.shape) == 3
    mode, white, black = ("RGB", (255,) * 3, (0,) * 3) if colour else ("L", 255, 0)
    grid = Image.new(mode, (GRID_COLUMNS * TILE_WIDTH, HEADER_HEIGHT + rows * TILE_HEIGHT), white)
    draw = ImageDraw.Draw(grid)
    # Pillow's built-in font (in its wheel): no font file to ship or to find.
    font = ImageFont.load_default(size=FONT_SIZE)
    title = (
        f"The {len(mistakes.labels)} most confident of {mistakes.wrong} mistakes on "
        f"{mistakes.seen:,} test images"
        if mistakes.wrong
        else f"No mistakes on {mistakes.seen:,} test images"
    )
    draw.text((8, 8), title, fill=black, font=font)
    for position, (image, label, probabilities) in enumerate(
        zip(mistakes.images, mistakes.labels, mistakes.probabilities, strict=True)
    ):
        shown = shown_image(image, digits)
        width, height = shown.size
        left = (position % GRID_COLUMNS) * TILE_WIDTH + (TILE_WIDTH - width) // 2
        top = HEADER_HEIGHT + (position // GRID_COLUMNS) * TILE_HEIGHT + (IMAGE_BOX - height) // 2
        grid.paste(shown, (left, top))
        frame = 200 if mode == "L" else (200,) * 3
        draw.rectangle((left - 1, top - 1, left + width, top + height), outline=frame)
        predicted = int(probabilities.argmax())
        caption = (
            f"true {_name(classes, label)} / predicted {_name(classes, predicted)} "
            f"({probabilities.max():.2f})"
        )
        centre = (position % GRID_COLUMNS) * TILE_WIDTH + TILE_WIDTH // 2
        bottom = HEADER_HEIGHT + (position // GRID_COLUMNS) * TILE_HEIGHT + IMAGE_BOX + 6
        draw.text((centre, bottom), caption, fill=black, font=font, anchor="ma")
    return grid


def write_mistakes(path: Path, mistakes: Mistakes, classes: list[str], digits: bool = True) -> None:
    grid = draw_grid(mistakes, classes, digits)
    with atomic_output(path) as temporary:
        # No metadata (time, software): the same predictions give the same PNG bytes.
        grid.save(temporary, format="PNG", optimize=True)
