"""Loading and calling the SavedModel: the one place that knows its signature.

evaluate, predict and export read models/<dataset> through these functions only, never
through the training code. Every file of the model is checked first against the SHA-256
that its model card (assets.extra/loopline.json, itself sealed) records: a file damaged,
cut short, missing or taken from another model is named in one line before TensorFlow
reads any. Writing it is loopline/model.py's `export_saved_model` (a
dependency of train: changing how models are read must not re-train them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from loopline.files import file_sha256, read_sealed_json

OUTPUTS = ("logits", "probabilities", "classes")
# Written by loopline/model.py export_saved_model (which this module must not import).
CARD = "assets.extra/loopline.json"
# The files of a SavedModel that the card lists with their SHA-256: no other name, and so
# no path that leaves the model's folder, is read.
MODEL_FILES = re.compile(
    r"saved_model\.pb|fingerprint\.pb|variables/variables\.(index|data-\d{5}-of-\d{5})"
    r"|assets/\w[\w.-]*"
)
REQUIRED_FILES = ("saved_model.pb", "variables/variables.index")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Card:
    """What the SavedModel's assets.extra/loopline.json says: its classes and input."""

    classes: tuple[str, ...]
    shape: tuple[int, ...]  # one image: (height, width) or (height, width, 3)
    framing: str
    dataset: str


def _restore(directory: Path) -> str:
    """How to get a good copy of the SavedModel at `directory` back."""
    return f"restore it with `dvc checkout {directory}` or re-create it with `dvc repro -f train`"


def _card_document(directory: Path) -> dict:
    """assets.extra/loopline.json, checked to be a model card: classes, input, files."""
    path = directory / CARD
    fix = _restore(directory)
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"{path}: no such file (the class names); {fix}")
    card = read_sealed_json(path, fix)
    names, files, source = card.get("classes"), card.get("files"), card.get("input")
    if not (
        isinstance(names, list)
        and isinstance(source, dict)
        and isinstance(source.get("framing"), str)
        and isinstance(files, dict)
    ):
        raise ValueError(f"{path}: not a model card of this project; {fix}")
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f"{path}: classes is {names!r:.40}, expected a list of names; {fix}")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ValueError(f"{path}: files lists no {missing[0]}; {fix}")
    for name, digest in files.items():
        if not MODEL_FILES.fullmatch(name):
            raise ValueError(f"{path}: files names {name!r:.60}, not a file of a SavedModel; {fix}")
        if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
            raise ValueError(f"{path}: files[{name!r}] is {digest!r:.20}, not a SHA-256; {fix}")
    return card


def verify_files(directory: Path) -> None:
    """Raise unless every file the model card lists has the SHA-256 it records: the
    SavedModel is, byte for byte, the one train wrote (a file damaged, cut short, replaced
    by another model's or by a folder is named)."""
    fix = _restore(directory)
    for name, expected in _card_document(directory)["files"].items():
        path = directory / name
        if not (path.exists() or path.is_symlink()):
            raise FileNotFoundError(f"{path}: no such file; {fix}")
        if file_sha256(path, fix) != expected:
            raise ValueError(
                f"{path}: its SHA-256 is not the one {CARD} records (the file, or the card, "
                f"changed after train wrote them); {fix}"
            )


def read_card(directory: Path, shape: tuple[int, ...], classes: int) -> Card:
    """The model card, checked against the signature's image `shape` and `classes`."""
    card = _card_document(directory)
    names = card["classes"]
    if len(names) != classes:
        raise ValueError(
            f"{directory / CARD}: {len(names)} class names for {classes} logits; "
            f"{_restore(directory)}"
        )
    framing = card["input"]["framing"]
    return Card(tuple(names), shape, framing, str(card.get("dataset", "")))


def check_fits(model: Path, card: Card, data: Path, classes: tuple[str, ...], shape: tuple) -> None:
    """Raise unless the model at `model` is one of the data set in `data` (its `classes`
    and image `shape`, from meta.json): not a model of another data set."""
    if card.classes != classes or card.shape != shape:
        raise ValueError(
            f"{model}: a model of {len(card.classes)} classes for images of "
            f"{list(card.shape)}, but {data} holds {len(classes)} classes of "
            f"{list(shape)} (another data set); run `dvc repro` to train on this one"
        )


def load_classifier(directory: Path):
    """The SavedModel's serving_default signature, checked to take uint8 images [batch,
    height, width] or [batch, height, width, 3]. Its files are checked first (verify_files),
    so a damaged one is named before TensorFlow reads it."""
    if not any((directory / name).exists() for name in ("saved_model.pb", CARD)):
        raise FileNotFoundError(f"{directory}: no SavedModel here; run `dvc repro train`")
    verify_files(directory)
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
