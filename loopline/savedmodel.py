"""Loading and calling the SavedModel: the one place that knows its signature.

evaluate, predict and export read models/mnist through these functions only, never through
the training code. Writing it is loopline/model.py's `export_saved_model` (a dependency of
train: changing how models are read must not re-train them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from loopline.records import IMAGE_SIZE

OUTPUTS = ("logits", "probabilities", "classes")


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
    if spec is None or spec.dtype != tf.uint8 or spec.shape.as_list()[1:] != [IMAGE_SIZE] * 2:
        raise ValueError(
            f"{directory}: serving_default takes {inputs}, expected images: uint8 "
            f"[batch, {IMAGE_SIZE}, {IMAGE_SIZE}]; re-create it with `dvc repro -f train`"
        )
    missing = [name for name in OUTPUTS if name not in signature.structured_outputs]
    if missing:
        raise ValueError(
            f"{directory}: serving_default returns no {', '.join(missing)}; "
            "re-create it with `dvc repro -f train`"
        )
    return signature


def predict(classifier, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Every output of the signature for every image, in batches (the last may be short)."""
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    batches = [classifier(images=batch) for batch in dataset.prefetch(2)]
    return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in OUTPUTS}
