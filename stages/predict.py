"""predict: the SavedModel alone + image files of handwritten digits -> one digit per file.

Reads  models/mnist (through its serving_default signature only: none of the training
       code), and PNG, JPEG or any other image Pillow reads, of any size and colour, dark
       ink on light paper or light on dark.
Writes to stdout one line per image: `<file>\t<digit>\t<probability>`; an unreadable file
       gets one `error:` line on stderr, the others are still classified, and the exit
       code is 1.
Run    python -m stages.predict [--model models/mnist] IMAGE...
"""

from __future__ import annotations

import loopline

if __name__ == "__main__":  # the command line: before TensorFlow is imported below
    loopline.import_tensorflow_quietly()

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from loopline.files import run_stage
from loopline.records import IMAGE_SIZE
from loopline.savedmodel import load_classifier, predict

# MNIST's framing: the digit's longer side is 20 pixels, its centre of mass at pixel
# (14, 14) (measured on the test set: 13.99, 14.00).
DIGIT_SIZE = 20
CENTRE = 14
# A pixel is ink, for cropping, from a quarter of the full stroke brightness up: low
# enough to keep thin strokes, high enough to leave out paper texture and shadows.
INK_THRESHOLD = 64
# A page whose ink differs from its paper by less than this (of 255) holds no digit: it is
# blank or one shade, and stretching its noise to full contrast would invent one. Real
# strokes, even on a dim grey photo, differ by 60 levels or more.
MIN_CONTRAST = 32
# Only bounds memory; any batch size gives the same predictions.
BATCH_SIZE = 256


def _grayscale(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent pixels usually hold black: show the drawing on white paper, as an
        # image viewer does, not on black.
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    if image.mode.startswith("I") or image.mode == "F":
        # 16- and 32-bit grey: convert("L") would clip everything above 255 to white.
        pixels = np.clip(np.asarray(image, np.float64), 0, None)
        return np.round(pixels * (255 / max(pixels.max(), 1))).astype(np.uint8)
    return np.asarray(image.convert("L"))


def read_image(path: Path) -> np.ndarray:
    """The image at `path` as grayscale uint8 [height, width]."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            # exif_transpose: phone photos are often stored rotated, with an EXIF note.
            return _grayscale(ImageOps.exif_transpose(image))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from None


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


def frame_digit(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale the longer side to 20 pixels, centre by mass in 28x28."""
    rows = np.flatnonzero((ink > INK_THRESHOLD).any(axis=1))
    columns = np.flatnonzero((ink > INK_THRESHOLD).any(axis=0))
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    if rows.size == 0:
        return canvas  # a blank page: nothing to frame
    crop = ink[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    scale = DIGIT_SIZE / max(crop.shape)
    height, width = (max(1, round(side * scale)) for side in crop.shape)
    digit = Image.fromarray(crop)  # mode F: float32
    digit = np.clip(np.asarray(digit.resize((width, height), Image.Resampling.LANCZOS)), 0, 255)
    # Scaling down a large photo thins the strokes into grey: bring the brightest back to 255.
    digit *= 255 / max(digit.max(), 1e-6)
    mass = digit.sum()
    centre_row = (digit.sum(axis=1) @ np.arange(height)) / mass
    centre_column = (digit.sum(axis=0) @ np.arange(width)) / mass
    top = int(np.clip(round(CENTRE - centre_row), 0, IMAGE_SIZE - height))
    left = int(np.clip(round(CENTRE - centre_column), 0, IMAGE_SIZE - width))
    canvas[top : top + height, left : left + width] = digit
    return canvas


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """A grayscale image of one digit as an MNIST image: uint8 [28, 28], light on dark."""
    ink = normalize_ink(gray)
    # MNIST-sized images are taken as already framed: re-framing MNIST's own digits would
    # only resample them (their ink box is 20 pixels and centred by mass already).
    if ink.shape != (IMAGE_SIZE, IMAGE_SIZE):
        ink = frame_digit(ink)
    return np.round(ink).astype(np.uint8)


def classify(classifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted digit and its probability for each of the uint8 images [n, 28, 28]."""
    outputs = predict(classifier, images, BATCH_SIZE)
    digits = outputs["classes"]
    return digits, outputs["probabilities"][np.arange(len(digits)), digits]


def main(argv: list[str] | None = None) -> int:
    """Classify every image named in `argv`; the exit code: 0, or 1 if any file failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files of one digit each")
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/mnist"),
        help="the SavedModel directory (default: %(default)s)",
    )
    arguments = parser.parse_args(argv)
    classifier = load_classifier(arguments.model)
    paths, images = [], []
    for path in arguments.images:
        try:
            images.append(to_mnist(read_image(path)))
        except NoDigitError as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            continue
        paths.append(path)
    if images:
        digits, probabilities = classify(classifier, np.stack(images))
        for path, digit, probability in zip(paths, digits, probabilities, strict=True):
            print(f"{path}\t{digit}\t{probability:.4f}")
    return 0 if len(paths) == len(arguments.images) else 1


if __name__ == "__main__":
    # run_stage turns a missing or invalid model into one `error:` line and exit code 1.
    run_stage(lambda: sys.exit(main()))
