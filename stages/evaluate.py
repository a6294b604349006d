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

from loopline import records
from loopline.files import atomic_output, run_stage, write_json
from loopline.mistakes import Mistakes, write_mistakes
from loopline.params import load_params
from loopline.savedmodel import check_fits, classify, load_card, load_classifier

PARAMS = ("eval_batch_size",)


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
