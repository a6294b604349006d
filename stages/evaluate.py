"""evaluate: the SavedModel alone + the test TFRecords -> test metrics.

Reads  models/<dataset> (through its serving_default signature and its model card only:
       none of the training code), data/prepared (test shards and meta.json), the params
       in PARAMS.
Writes metrics/eval.json: accuracy and loss over every test image (two columns of the
       metrics tables, which must fit a terminal: nothing else goes there);
       metrics/per_class.json: accuracy, error rate and test images of each class, by
       name (a chart);
       metrics/confusion.csv: one (actual, predicted) row of class names per test image,
       for the confusion matrix of `dvc plots show`;
       metrics/mistakes.png: the most confident wrong predictions, shown by `dvc plots show`.
Run    dvc repro evaluate
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from loopline import records
from loopline.files import atomic_output, run_stage, write_json
from loopline.params import load_params
from loopline.savedmodel import check_fits, classify, load_card, load_classifier

PARAMS = ("eval_batch_size",)

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


def example_losses(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The cross-entropy of each example's `logits` against its label."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy()


def compute_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy of `logits` against `labels`."""
    return summarise(labels, logits.argmax(axis=1), example_losses(labels, logits))


def summarise(labels: np.ndarray, predictions: np.ndarray, losses: np.ndarray) -> dict:
    """Accuracy of `predictions` and the mean of the examples' `losses`."""
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "loss": float(np.mean(losses)),
    }


def per_class_accuracy(
    labels: np.ndarray, predictions: np.ndarray, classes: list[str]
) -> list[dict]:
    """One {"class", "accuracy", "error_rate", "examples"} row per class in `labels`.

    A list of rows, as DVC's plots read it, in a file that is not a metrics file: a column
    per class would make `dvc exp show` and `dvc metrics show` too wide to read. The chart
    draws the error rate: accuracies of 0.96 to 0.996 look alike as bars.
    """
    rows = []
    for index, name in enumerate(classes):
        chosen = labels == index
        if np.any(chosen):
            accuracy = float(np.mean(predictions[chosen] == index))
            rows.append(
                {
                    "class": name,
                    "accuracy": accuracy,
                    "error_rate": 1.0 - accuracy,
                    "examples": int(np.sum(chosen)),
                }
            )
    return rows


def write_confusion(
    path: Path, labels: np.ndarray, predictions: np.ndarray, classes: list[str]
) -> None:
    """One `actual,predicted` row of class names per image (quoted where CSV needs it)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows(
        (classes[actual], classes[predicted])
        for actual, predicted in zip(labels, predictions, strict=True)
    )
    with atomic_output(path) as temporary:
        temporary.write_text(text.getvalue())


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


@dataclass
class Evaluation:
    """What evaluate keeps of the test set: per image, its label, the predicted class and
    the loss; and the most confident mistakes with their images."""

    labels: np.ndarray
    predictions: np.ndarray
    losses: np.ndarray
    mistakes: Mistakes


def evaluate_test_split(classifier, data_dir: Path, batch_size: int) -> Evaluation:
    """The classifier on every test image, a batch at a time (the last may be short)."""
    labels, predictions, losses = [], [], []
    mistakes = Mistakes(records.data_meta(data_dir).shape)
    for images, batch_labels in records.read_batches(data_dir, "test", batch_size):
        outputs = classify(classifier, images)
        labels.append(batch_labels)
        predictions.append(outputs["classes"])
        losses.append(example_losses(batch_labels, outputs["logits"]))
        mistakes.add(images, batch_labels, outputs["probabilities"])
    return Evaluation(
        *(np.concatenate(arrays) for arrays in (labels, predictions, losses)), mistakes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the SavedModel directory")
    parser.add_argument("data", type=Path, help="directory of the prepared TFRecords")
    parser.add_argument("metrics", type=Path, help="where to write the test metrics JSON")
    parser.add_argument("per_class", type=Path, help="where to write per-class accuracy JSON")
    parser.add_argument("confusion", type=Path, help="where to write (actual, predicted) CSV")
    parser.add_argument("mistakes", type=Path, help="where to write the mistakes grid PNG")
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    classifier = load_classifier(arguments.model)
    card = load_card(arguments.model, classifier)
    data = records.data_meta(arguments.data)
    check_fits(arguments.model, card, arguments.data, data.classes, data.shape)
    classes = list(data.classes)
    results = evaluate_test_split(classifier, arguments.data, params["eval_batch_size"])
    labels, predictions = results.labels, results.predictions
    metrics = summarise(labels, predictions, results.losses)
    print(
        f"evaluate: test accuracy {metrics['accuracy']:.4f} loss {metrics['loss']:.4f} "
        f"on {len(labels)} images"
    )
    write_json(arguments.metrics, metrics)
    write_json(arguments.per_class, per_class_accuracy(labels, predictions, classes))
    write_confusion(arguments.confusion, labels, predictions, classes)
    write_mistakes(arguments.mistakes, results.mistakes, classes, data.framing == "digit")


if __name__ == "__main__":
    run_stage(main)
