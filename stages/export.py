"""export: the SavedModel -> a TFLite model for phones and microcontrollers, tested.

Reads  models/<dataset> (the SavedModel, through TFLiteConverter.from_saved_model: the
       loader that needs its variables in the graph, see loopline/model.py Serving),
       data/prepared (the test shards, a batch at a time; for int8, the first training
       images to calibrate on), the params in PARAMS.
Writes models/<dataset>.tflite: serving_default as a TFLite signature (uint8 images [batch,
       height, width(, 3)] -> logits, probabilities, classes), quantized as the
       `quantization` param says;
       metrics/export.json: its accuracy on every test image, and its size. The
       SavedModel's accuracy, how often the two agree and the latency per image are
       printed, not written: a wall-clock number in a tracked file would change on every
       run and leave git dirty after `dvc repro`.
Run    dvc repro export
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

# ai-edge-litert, not tf.lite.Interpreter: the latter warns that it is deprecated in TF 2.21
# and will be removed; LiteRT is the maintained runtime with the same API, and the one a
# device installs (a few MB, without TensorFlow), so the accuracy export reports is the
# one of the runtime that ships.
from ai_edge_litert.interpreter import Interpreter

from loopline import records
from loopline.files import atomic_output, run_stage, write_json
from loopline.params import dispatch_table, load_params
from loopline.savedmodel import check_fits, classify, load_card, load_classifier

PARAMS = ("quantization", "eval_batch_size")

# int8 calibrates each layer's ranges on this many training images (TFLite's guide suggests
# a few hundred); a constant, as the code is a dependency of the stage.
CALIBRATION_IMAGES = 500
# Latency: one image per call, as a device classifies, after a few calls of warm-up.
LATENCY_IMAGES = 500
WARMUP_CALLS = 20


def quantize_float(converter: tf.lite.TFLiteConverter, data: Path) -> None:
    """float32 weights and arithmetic: the SavedModel's numbers."""


def quantize_dynamic_range(converter: tf.lite.TFLiteConverter, data: Path) -> None:
    """int8 weights (a quarter of the size), float activations: no calibration data."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def quantize_int8(converter: tf.lite.TFLiteConverter, data: Path) -> None:
    """int8 weights and activations (integer-only accelerators), calibrated on training images."""
    calibration = first_images(data, "train", CALIBRATION_IMAGES)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ({"images": image[None]} for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def first_images(data: Path, split: str, count: int) -> np.ndarray:
    """The first `count` images of a split (all, if it has fewer), reading only the shards
    they are in, each hashed against meta.json first."""
    shape = records.data_meta(data).shape
    images, held = [], 0
    for path, digest in records.split_meta(data, split).shards.items():
        if held == count:
            break
        records.verify_shards({path: digest})
        for batch, _ in records.read_file(path, shape):
            images.append(batch[: count - held])
            held += len(images[-1])
            if held == count:
                break
    return np.concatenate(images) if images else np.zeros((0, *shape), np.uint8)


CONVERSIONS = dispatch_table(
    "quantization",
    float=quantize_float,
    dynamic_range=quantize_dynamic_range,
    int8=quantize_int8,
)


def convert(model: Path, data: Path, quantization: str) -> bytes:
    """The SavedModel at `model` as a TFLite flatbuffer."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(model))
    CONVERSIONS[quantization](converter, data)
    with warnings.catch_warnings():
        # int8 calibration runs TensorFlow's own tf.lite.Interpreter, which then warns that
        # it is deprecated: not something this code or its user can change.
        warnings.filterwarnings("ignore", r"\s*Warning: tf.lite.Interpreter is deprecated")
        return converter.convert()


def tflite_outputs(runner, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """The TFLite signature's outputs for every image, in batches (the last may be short)."""
    batches = [runner(images=images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def latency_ms(runner, images: np.ndarray) -> float:
    """Median milliseconds of one call on one image."""
    for image in images[:WARMUP_CALLS]:
        runner(images=image[None])
    seconds = []
    for image in images[:LATENCY_IMAGES]:
        start = time.perf_counter()
        runner(images=image[None])
        seconds.append(time.perf_counter() - start)
    return 1000 * float(np.median(seconds))


def classify_test_split(runner, classifier, data: Path, batch_size: int) -> dict[str, np.ndarray]:
    """Each test image's label and the classes TFLite and the SavedModel give it, a batch
    at a time; and the first LATENCY_IMAGES images, to time."""
    labels, tflite, savedmodel, first = [], [], [], []
    for images, batch_labels in records.read_batches(data, "test", batch_size):
        labels.append(batch_labels)
        tflite.append(runner(images=images)["classes"])
        savedmodel.append(classify(classifier, images)["classes"])
        # A copy: a slice, even an empty one, would keep the whole batch alive.
        first.append(images[: LATENCY_IMAGES - sum(map(len, first))].copy())
    arrays = {"labels": labels, "tflite": tflite, "savedmodel": savedmodel, "first": first}
    return {name: np.concatenate(batches) for name, batches in arrays.items()}


def export(model: Path, data: Path, tflite: Path, params: dict) -> tuple[dict, dict]:
    """Convert, write `tflite` and test it; returns its metrics, and what is only printed:
    the SavedModel's accuracy, the share of test images both classify alike, the latency."""
    # A missing, damaged or foreign model: one line, before anything is written.
    classifier = load_classifier(model)
    meta = records.data_meta(data)
    check_fits(model, load_card(model, classifier), data, meta.classes, meta.shape)
    content = convert(model, data, params["quantization"])
    with atomic_output(tflite) as temporary:
        temporary.write_bytes(content)
        # Tested as written, from the file a device will load; damaged test data is
        # refused here, before the file takes the place of the previous one.
        runner = Interpreter(str(temporary)).get_signature_runner("serving_default")
        tested = classify_test_split(runner, classifier, data, params["eval_batch_size"])
    labels, classes, savedmodel = tested["labels"], tested["tflite"], tested["savedmodel"]
    # Two columns in `dvc metrics show` and `dvc exp show`, named apart from evaluate's
    # `accuracy` (a shared name would make DVC print both with their full paths).
    metrics = {
        "tflite_accuracy": float(np.mean(classes == labels)),
        "tflite_bytes": len(content),
    }
    report = {
        "savedmodel_accuracy": float(np.mean(savedmodel == labels)),
        "agreement": float(np.mean(classes == savedmodel)),
        "latency_ms": latency_ms(runner, tested["first"]),
    }
    return metrics, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the SavedModel directory")
    parser.add_argument("data", type=Path, help="directory of the prepared TFRecords")
    parser.add_argument("tflite", type=Path, help="where to write the TFLite model")
    parser.add_argument("metrics", type=Path, help="where to write the export metrics JSON")
    parser.add_argument("--params", default="params.yaml", help="(default: %(default)s)")
    arguments = parser.parse_args()
    params = load_params(PARAMS, arguments.params)
    metrics, report = export(arguments.model, arguments.data, arguments.tflite, params)
    print(
        f"export: {params['quantization']} TFLite model, {metrics['tflite_bytes']:,} bytes, "
        f"test accuracy {metrics['tflite_accuracy']:.4f} (SavedModel "
        f"{report['savedmodel_accuracy']:.4f}, same class for {report['agreement']:.2%} of "
        f"images), {report['latency_ms']:.3f} ms per image (one per call; not recorded: "
        "wall-clock)"
    )
    write_json(arguments.metrics, metrics)


if __name__ == "__main__":
    run_stage(main)
