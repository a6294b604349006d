"""evaluate: the SavedModel alone + the test TFRecords -> test metrics.

Reads  models/mnist (through its serving_default signature only: none of the training
       code), data/prepared (test shards and meta.json), the params in PARAMS.
Writes metrics/eval.json: accuracy and loss over every test image, per-class accuracy;
       metrics/confusion.csv: one (actual, predicted) row per test image, for the
       confusion matrix of `dvc plots show`.
Run    dvc repro evaluate
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tensorflow as tf

from stages import records
from stages.files import atomic_output, run_stage, write_json
from stages.params import load_params

PARAMS = ("eval_batch_size",)


def load_classifier(directory: Path):
    """The SavedModel's serving_default signature, checked to take uint8 [batch, 28, 28]."""
    if not (directory / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{directory}: no SavedModel here; run `dvc repro train`")
    try:
        signature = tf.saved_model.load(str(directory)).signatures["serving_default"]
    except (KeyError, OSError, ValueError, tf.errors.OpError) as error:
        raise ValueError(
            f"{directory}: not a loadable SavedModel with a serving_default signature "
            f"({type(error).__name__}); re-create it with `dvc repro -f train`"
        ) from None
    inputs = signature.structured_input_signature[1]
    spec = inputs.get("images")
    size = records.IMAGE_SIZE
    if spec is None or spec.dtype != tf.uint8 or spec.shape.as_list()[1:] != [size, size]:
        raise ValueError(
            f"{directory}: serving_default takes {inputs}, expected images: uint8 "
            f"[batch, {size}, {size}]; re-create it with `dvc repro -f train`"
        )
    if "logits" not in signature.structured_outputs:
        raise ValueError(f"{directory}: serving_default returns no logits; re-run training")
    return signature


def predict_logits(classifier, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits [n, 10] for every image, in batches (the last one may be short)."""
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    return np.concatenate(
        [classifier(images=batch)["logits"].numpy() for batch in dataset.prefetch(2)]
    )


def compute_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy, mean cross-entropy and per-class accuracy of `logits` against `labels`."""
    predictions = logits.argmax(axis=1)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy()
    per_class = {
        str(digit): float(np.mean(predictions[labels == digit] == digit))
        for digit in range(records.NUM_CLASSES)
        if np.any(labels == digit)
    }
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "loss": float(np.mean(losses)),
        "examples": len(labels),
        "per_class_accuracy": per_class,
    }


def write_confusion(path: Path, labels: np.ndarray, predictions: np.ndarray) -> None:
    with atomic_output(path) as temporary:
        pairs = zip(labels, predictions, strict=True)
        temporary.write_text("actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in pairs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the SavedModel directory")
    parser.add_argument("data", type=Path, help="directory of the prepared TFRecords")
    parser.add_argument("metrics", type=Path, help="where to write the test metrics JSON")
    parser.add_argument("confusion", type=Path, help="where to write (actual, predicted) CSV")
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    classifier = load_classifier(arguments.model)
    images, labels = records.load_split(arguments.data, "test")
    logits = predict_logits(classifier, images, params["eval_batch_size"])
    metrics = compute_metrics(labels, logits)
    print(
        f"evaluate: test accuracy {metrics['accuracy']:.4f} loss {metrics['loss']:.4f} "
        f"on {metrics['examples']} images"
    )
    write_json(arguments.metrics, metrics)
    write_confusion(arguments.confusion, labels, logits.argmax(axis=1))


if __name__ == "__main__":
    run_stage(main)
