"""Loading and calling the SavedModel: the one place that knows its signature.

evaluate, predict and export read models/<dataset> through these functions only, never
through the training code. Writing it is loopline/model.py's `export_saved_model` (a
dependency of train: changing how models are read must not re-train them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

OUTPUTS = ("logits", "probabilities", "classes")
# Written by loopline/model.py export_saved_model (which this module must not import).
CARD = "assets.extra/loopline.json"


@dataclass(frozen=True)
class Card:
    """What the SavedModel's assets.extra/loopline.json says: its classes and input."""

    classes: tuple[str, ...]
    shape: tuple[int, ...]  # one image: (height, width) or (height, width, 3)
    framing: str
    dataset: str


def read_card(directory: Path, shape: tuple[int, ...], classes: int) -> Card:
    """The model card, checked against the signature's image `shape` and `classes`."""
    path = directory / CARD
    fix = "re-create the model with `dvc repro -f train`"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the class names); {fix}")
    try:
        card = json.loads(path.read_bytes())
        names, framing = card["classes"], card["input"]["framing"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise ValueError(f"{path}: not a model card of this project; {fix}") from None
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise ValueError(f"{path}: classes is {names!r:.40}, expected a list of names; {fix}")
    if len(names) != classes:
        raise ValueError(f"{path}: {len(names)} class names for {classes} logits; {fix}")
    return Card(tuple(names), shape, str(framing), str(card.get("dataset", "")))


def load_classifier(directory: Path):
    """The SavedModel's serving_default signature, checked to take uint8 images [batch,
    height, width] or [batch, height, width, 3]."""
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
    dims = spec.shape.as_list()[1:] if spec is not None and spec.shape.rank else []
    if (
        spec is None
        or spec.dtype != tf.uint8
        or len(dims) not in (2, 3)
        or None in dims
        or dims[2:] not in ([], [3])
    ):
        raise ValueError(
            f"{directory}: serving_default takes {inputs}, expected images: uint8 "
            "[batch, height, width] or [batch, height, width, 3]; re-create it with "
            "`dvc repro -f train`"
        )
    missing = [name for name in OUTPUTS if name not in signature.structured_outputs]
    if missing:
        raise ValueError(
            f"{directory}: serving_default returns no {', '.join(missing)}; "
            "re-create it with `dvc repro -f train`"
        )
    return signature


def image_shape(classifier) -> tuple[int, ...]:
    """The shape of one image the classifier takes: (height, width) or (height, width, 3)."""
    return tuple(classifier.structured_input_signature[1]["images"].shape.as_list()[1:])


def load_card(directory: Path, classifier) -> Card:
    """The classifier's model card (class names, input), checked against its signature."""
    classes = classifier.structured_outputs["logits"].shape.as_list()[-1]
    return read_card(directory, image_shape(classifier), classes)


def classify(classifier, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the signature for one batch of images."""
    outputs = classifier(images=tf.convert_to_tensor(images, tf.uint8))
    return {name: outputs[name].numpy() for name in OUTPUTS}


def predict(classifier, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Every output of the signature for every image, in batches (the last may be short)."""
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    batches = [classifier(images=batch) for batch in dataset.prefetch(2)]
    return {name: np.concatenate([batch[name].numpy() for batch in batches]) for name in OUTPUTS}
