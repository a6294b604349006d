"""predict: the SavedModel alone + image files -> one class per file.

Reads  models/<dataset> (through its serving_default signature and its model card only:
       none of the training code), and PNG, JPEG or any other image Pillow reads.
       A model of a data set of handwritten digits framed as MNIST's (framing: digit)
       takes photos or drawings of one digit of any size and colour, dark ink on light
       paper or light on dark: each is cropped to its ink and centred by mass, as MNIST's
       digits are. Any other model's images are prepared exactly as prepare prepared its
       training images, by the same function (loopline/images.py load_image).
Writes to stdout one line per image: `<file>\t<class>\t<probability>`; an unreadable file
       gets one `error:` line on stderr, the others are still classified, and the exit
       code is 1.
Run    python -m stages.predict [--model models/<dataset>] IMAGE...
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from loopline.files import check_file, run_stage
from loopline.images import load_image
from loopline.params import load_params
from loopline.savedmodel import Card, load_card, load_classifier, predict

# MNIST's framing: in 28x28 pixels, the digit's longer side is 20 pixels, its centre of
# mass at pixel (14, 14) (measured on the test set: 13.99, 14.00). Other sizes scale them.
MNIST_SIZE = 28
DIGIT_SIZE = 20
# A pixel is ink, for cropping, from a quarter of the full stroke brightness up: low
# enough to keep thin strokes, high enough to leave out paper texture and shadows.
INK_THRESHOLD = 64
# A page whose ink differs from its paper by less than this (of 255) holds no digit: it is
# blank or one shade, and stretching its noise to full contrast would invent one. Real
# strokes, even on a dim grey photo, differ by 60 levels or more.
MIN_CONTRAST = 32
# Only bounds memory; any batch size gives the same predictions.
BATCH_SIZE = 256


def read_image(path: Path) -> np.ndarray:
    """The image at `path` as grayscale uint8 [height, width], as it is (no resizing)."""
    check_file(path, "")  # missing, a folder, a FIFO (which would block): one line
    return load_image(path, None, 1)


class NoDigitError(ValueError):
    """The image holds no digit: a blank or uniform page."""


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])


def normalize_ink(gray: np.ndarray) -> np.ndarray:
    """Float pixels as MNIST has them: light ink (up to 255) on a black (0) background."""
    pixels = gray.astype(np.float32)
    # The border is mostly background, while the ink pulls the overall mean towards its
    # own shade: a border brighter than the mean means dark ink on light paper. This holds
    # for grey or dim photos too, where the median-against-128 rule fails.
    if np.median(_border(pixels)) > pixels.mean():
        pixels = 255 - pixels
    background = np.median(_border(pixels))
    pixels = np.clip(pixels - background, 0, None)
    peak = pixels.max()
    if peak < MIN_CONTRAST:
        raise NoDigitError(
            f"no digit found: the image is blank or of one shade (contrast {peak:.0f} of 255)"
        )
    return pixels * (255 / peak)


def frame_digit(ink: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop to the ink, scale the longer side to 20/28 of `size` (height, width), centre by
    mass."""
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    columns = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    canvas = np.zeros(size, np.float32)
    if rows.size == 0:
        return canvas  # a blank page: nothing to frame
    crop = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    scale = max(1, round(min(size) * DIGIT_SIZE / MNIST_SIZE)) / max(crop.shape)
    pairs = zip(crop.shape, size, strict=True)
    height, width = (max(1, min(round(side * scale), limit)) for side, limit in pairs)
    digit = Image.fromarray(crop)  # mode F: float32
    digit = np.clip(np.asarray(digit.resize((width, height), Image.Resampling.LANCZOS)), 0, 255)
    # Scaling down a large photo thins the strokes into grey: bring the brightest back to 255.
    digit *= 255 / max(digit.max(), 1e-6)
    mass = digit.sum()
    centre_row = (digit.sum(axis=1) @ np.arange(height)) / mass
    centre_column = (digit.sum(axis=0) @ np.arange(width)) / mass
    top = int(np.clip(round(size[0] / 2 - centre_row), 0, size[0] - height))
    left = int(np.clip(round(size[1] / 2 - centre_column), 0, size[1] - width))
    canvas[top : top + height, left : left + width] = digit
    return canvas


def to_mnist(gray: np.ndarray, size: tuple[int, int] = (MNIST_SIZE, MNIST_SIZE)) -> np.ndarray:
    """A grayscale image of one digit as MNIST frames it: uint8 `size`, light on dark."""
    ink = normalize_ink(gray)
    # Images of the model's size are taken as already framed: re-framing MNIST's own
    # digits would only resample them (their ink box is 20 pixels and centred by mass).
    if ink.shape != size:
        ink = frame_digit(ink, size)
    return np.round(ink).astype(np.uint8)


def prepare_image(path: Path, card: Card) -> np.ndarray:
    """The image at `path` as the model takes it (see the module's docstring)."""
    if card.framing == "digit":
        return to_mnist(read_image(path), card.shape[:2])
    check_file(path, "")
    return load_image(path, card.shape[:2], 3 if len(card.shape) == 3 else 1)


def classify(classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class index and its probability for each of the uint8 `images`."""
    outputs = predict(classifier, images, BATCH_SIZE)
    indices = outputs["classes"]
    return indices, outputs["probabilities"][np.arange(len(indices)), indices]


def default_model() -> Path:
    """models/<dataset of params.yaml>, or models/mnist without a readable params.yaml."""
    try:
        return Path("models") / load_params(("dataset",))["dataset"]
    except (ValueError, FileNotFoundError):
        return Path("models/mnist")


def main(argv: list[str] | None = None) -> int:
    """Classify every image named in `argv`; the exit code: 0, or 1 if any file failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files to classify")
    parser.add_argument(
        "--model",
        type=Path,
        help="the SavedModel directory (default: models/<dataset> of params.yaml)",
    )
    arguments = parser.parse_args(argv)
    model = arguments.model or default_model()
    classifier = load_classifier(model)
    card = load_card(model, classifier)
    paths, images = [], []
    for path in arguments.images:
        try:
            images.append(prepare_image(path, card))
        except NoDigitError as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            continue
        paths.append(path)
    if images:
        indices, probabilities = classify(classifier, np.stack(images))
        for path, index, probability in zip(paths, indices, probabilities, strict=True):
            print(f"{path}\t{card.classes[index]}\t{probability:.4f}")
    return 0 if len(paths) == len(arguments.images) else 1


if __name__ == "__main__":
    # run_stage turns a missing or invalid model into one `error:` line and exit code 1.
    run_stage(lambda: sys.exit(main()))
