"""evaluate: the SavedModel alone + the test TFRecords -> test metrics.

Reads  models/mnist (through its serving_default signature only: none of the training
       code), data/prepared (test shards and meta.json), the params in PARAMS.
Writes metrics/eval.json: accuracy and loss over every test image (two columns of the
       metrics tables, which must fit a terminal: nothing else goes there);
       metrics/per_class.json: accuracy, error rate and test images of each digit (a chart);
       metrics/confusion.csv: one (actual, predicted) row per test image, for the
       confusion matrix of `dvc plots show`;
       metrics/mistakes.png: the most confident wrong predictions, shown by `dvc plots show`.
Run    dvc repro evaluate
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from loopline import records
from loopline.files import atomic_output, run_stage, write_json
from loopline.params import load_params
from loopline.savedmodel import load_classifier, predict

PARAMS = ("eval_batch_size",)

# The mistakes grid. Presentation only, so constants rather than params: changing them
# must not invalidate an experiment.
MISTAKES_SHOWN = 24
GRID_COLUMNS = 6
DIGIT_SCALE = 4  # each MNIST pixel becomes a crisp 4x4 block: 28 -> 112 pixels
TILE_WIDTH, TILE_HEIGHT = 160, 140  # wide enough for "true 7 / predicted 2 (0.99)"
HEADER_HEIGHT = 28
FONT_SIZE = 12


def compute_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy and mean cross-entropy of `logits` against `labels`."""
    predictions = logits.argmax(axis=1)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy()
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "loss": float(np.mean(losses)),
    }


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> list[dict]:
    """One {"digit", "accuracy", "error_rate", "examples"} row per digit in `labels`.

    A list of rows, as DVC's plots read it, in a file that is not a metrics file: ten
    per-digit columns would make `dvc exp show` and `dvc metrics show` too wide to read.
    The chart draws the error rate: accuracies of 0.96 to 0.996 look alike as bars.
    """
    rows = []
    for digit in range(records.NUM_CLASSES):
        chosen = labels == digit
        if np.any(chosen):
            accuracy = float(np.mean(predictions[chosen] == digit))
            rows.append(
                {
                    "digit": str(digit),
                    "accuracy": accuracy,
                    "error_rate": 1.0 - accuracy,
                    "examples": int(np.sum(chosen)),
                }
            )
    return rows


def write_confusion(path: Path, labels: np.ndarray, predictions: np.ndarray) -> None:
    with atomic_output(path) as temporary:
        pairs = zip(labels, predictions, strict=True)
        temporary.write_text("actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in pairs))


def most_confident_mistakes(
    labels: np.ndarray, probabilities: np.ndarray, count: int
) -> np.ndarray:
    """Indices of up to `count` wrong predictions, the most confident first."""
    wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
    confidence = probabilities[wrong].max(axis=1)
    # Stable: equal confidences keep test-set order, so the grid is the same every run.
    return wrong[np.argsort(-confidence, kind="stable")[:count]]


def draw_mistakes(
    images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, count: int = MISTAKES_SHOWN
) -> Image.Image:
    """A grid of the `count` most confident mistakes: each digit, its true and predicted label."""
    chosen = most_confident_mistakes(labels, probabilities, count)
    wrong = int(np.sum(probabilities.argmax(axis=1) != labels))
    rows = -(-len(chosen) // GRID_COLUMNS)
    grid = Image.new("L", (GRID_COLUMNS * TILE_WIDTH, HEADER_HEIGHT + rows * TILE_HEIGHT), 255)
    draw = ImageDraw.Draw(grid)
    # Pillow's built-in font (in its wheel): no font file to ship or to find.
    font = ImageFont.load_default(size=FONT_SIZE)
    title = (
        f"The {len(chosen)} most confident of {wrong} mistakes on {len(labels):,} test images"
        if wrong
        else f"No mistakes on {len(labels):,} test images"
    )
    draw.text((8, 8), title, fill=0, font=font)
    size = records.IMAGE_SIZE * DIGIT_SCALE
    for position, index in enumerate(chosen):
        left = (position % GRID_COLUMNS) * TILE_WIDTH + (TILE_WIDTH - size) // 2
        top = HEADER_HEIGHT + (position // GRID_COLUMNS) * TILE_HEIGHT
        # Dark ink on white paper, as people write digits; NEAREST keeps the pixels visible.
        digit = Image.fromarray(255 - images[index]).resize((size, size), Image.Resampling.NEAREST)
        grid.paste(digit, (left, top))
        draw.rectangle((left - 1, top - 1, left + size, top + size), outline=200)
        predicted = int(probabilities[index].argmax())
        caption = f"true {labels[index]} / predicted {predicted} ({probabilities[index].max():.2f})"
        draw.text((left + size // 2, top + size + 6), caption, fill=0, font=font, anchor="ma")
    return grid


def write_mistakes(
    path: Path, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray
) -> None:
    with atomic_output(path) as temporary:
        # No metadata (time, software): the same predictions give the same PNG bytes.
        draw_mistakes(images, labels, probabilities).save(temporary, format="PNG", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the SavedModel directory")
    parser.add_argument("data", type=Path, help="directory of the prepared TFRecords")
    parser.add_argument("metrics", type=Path, help="where to write the test metrics JSON")
    parser.add_argument("per_class", type=Path, help="where to write per-digit accuracy JSON")
    parser.add_argument("confusion", type=Path, help="where to write (actual, predicted) CSV")
    parser.add_argument("mistakes", type=Path, help="where to write the mistakes grid PNG")
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    classifier = load_classifier(arguments.model)
    images, labels = records.load_split(arguments.data, "test")
    outputs = predict(classifier, images, params["eval_batch_size"])
    logits, classes = outputs["logits"], outputs["classes"]
    metrics = compute_metrics(labels, logits)
    print(
        f"evaluate: test accuracy {metrics['accuracy']:.4f} loss {metrics['loss']:.4f} "
        f"on {len(labels)} images"
    )
    write_json(arguments.metrics, metrics)
    write_json(arguments.per_class, per_class_accuracy(labels, classes))
    write_confusion(arguments.confusion, labels, classes)
    write_mistakes(arguments.mistakes, images, labels, outputs["probabilities"])


if __name__ == "__main__":
    run_stage(main)
