"""Image files -> uint8 pixel arrays: the one function prepare and predict both use.

`load_image` decodes a file with Pillow, applies its EXIF orientation, puts transparent
pixels on white paper, converts it to grey or RGB and resizes it, so that a served model
sees exactly the pixels its training data had. It imports no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Resizing, when an image's size differs from the data set's: Pillow's bilinear filter,
# which (unlike tf.image.resize's default) widens its support when it shrinks, so a large
# photo is averaged rather than sampled.
RESAMPLING = Image.Resampling.BILINEAR
# Pillow modes of one channel (with or without alpha): a grey image.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# The EXIF tag that says how the camera was held.
ORIENTATION = 0x0112
# A thread decodes this many files per task: fewer hand-offs than one file per task, and
# still small enough that the threads finish together.
CHUNK_FILES = 64


class ImageError(ValueError):
    """A file that is not a readable image."""


def channels_of(mode: str) -> int:
    """1 for a grey Pillow mode, 3 for any other (RGB, RGBA, P, CMYK, ...)."""
    return 1 if mode in GREY_MODES else 3


def _on_white(image: Image.Image) -> Image.Image:
    # Transparent pixels usually hold black: show the drawing on white paper, as an image
    # viewer does, not on black.
    paper = Image.new("RGBA", image.size, "white")
    return Image.alpha_composite(paper, image.convert("RGBA"))


def _upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation says (phone photos are often stored rotated)."""
    if image.getexif().get(ORIENTATION, 1) in (1, None):
        return image  # no copy: exif_transpose would copy every image to change nothing
    return ImageOps.exif_transpose(image)


def _draft(image: Image.Image, size: tuple[int, int]) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 of its size when it is to be shrunk at least that
    much (libjpeg scales while it decodes, several times faster than decoding the whole
    photo); the resize then does the rest. Other formats ignore it."""
    if image.format != "JPEG":
        return
    height, width = size
    if image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # stored turned a quarter
        height, width = width, height
    image.draft(None, (width, height))


def _converted(image: Image.Image, channels: int) -> Image.Image:
    """`image` in mode L (channels 1) or RGB, transparent pixels on white."""
    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
        image = _on_white(image)
    if image.mode.startswith("I") or image.mode == "F":
        # 16- and 32-bit grey: convert("L") would clip everything above 255 to white.
        wide = np.asarray(image, np.float64)
        grey = np.clip(np.round(wide / 257) if wide.max() > 255 else wide, 0, 255)
        image = Image.fromarray(grey.astype(np.uint8), "L")
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def load_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """The image file at `path` as uint8 pixels [height, width] (channels 1) or [height,
    width, 3], resized to `size` (height, width) unless it is None or already that size."""
    try:
        with Image.open(path) as image:
            if size is not None:
                _draft(image, size)
            image = _converted(_upright(image), channels)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), RESAMPLING)
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: not a readable image ({_reason(error, path)})") from None


def inspect_image(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) of the image at `path`, upright, after decoding all of it
    (a truncated or damaged file fails here, not only once its header is read)."""
    try:
        with Image.open(path) as image:
            image.load()
            upright = _upright(image)
            return upright.height, upright.width, channels_of(image.mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: not a readable image ({_reason(error, path)})") from None


def read_header(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) of the image at `path`, upright, from its header alone."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # turned a quarter
                width, height = height, width
            return height, width, channels_of(image.mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: not a readable image ({_reason(error, path)})") from None


def _reason(error: BaseException, path: Path) -> str:
    # Pillow's messages often quote the file name, which the line already starts with.
    text = str(error).replace(f" {str(path)!r}", "").replace(f" {path!r}", "")
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


def _inspect_chunk(paths: list[Path]) -> list[tuple[int, int, int]]:
    return [inspect_image(path) for path in paths]


def _load_chunk(paths: list[Path], size: tuple[int, int], channels: int) -> np.ndarray:
    return np.stack([load_image(path, size, channels) for path in paths])


def in_parallel(function: Callable, paths: list[Path], *arguments) -> Iterator:
    """`function(chunk, *arguments)` for consecutive chunks of `paths`, in order, on one
    thread per core.

    Threads, not processes: Pillow decodes and resizes with Python's lock released, which
    is where a photo's time goes, and threads cost nothing to start. (Processes would
    also run the Python part of decoding a small image at once, but a process pool started
    from a stage re-imports the stage's module, TensorFlow with it, in every worker: seconds
    each; and forking a process that runs TensorFlow's threads is unsafe.)
    """
    chunks = [paths[start : start + CHUNK_FILES] for start in range(0, len(paths), CHUNK_FILES)]
    if len(chunks) == 1 or workers() == 1:
        yield from (function(chunk, *arguments) for chunk in chunks)
        return
    with ThreadPoolExecutor(workers()) as pool:
        yield from pool.map(lambda chunk: function(chunk, *arguments), chunks)


def inspect_all(paths: list[Path]) -> list[tuple[int, int, int]]:
    """inspect_image of every path, on every core; the first bad file raises ImageError."""
    return [shape for chunk in in_parallel(_inspect_chunk, paths) for shape in chunk]


def read_headers(paths: list[Path]) -> list[tuple[int, int, int]]:
    """read_header of every path (in this thread: reading a header is Python, which
    threads would run one at a time)."""
    return [read_header(path) for path in paths]


def load_all(paths: list[Path], out: np.ndarray, size: tuple[int, int], channels: int) -> None:
    """Decode every path into `out` [len(paths), height, width(, 3)], on every core."""
    start = 0
    for chunk in in_parallel(_load_chunk, paths, size, channels):
        out[start : start + len(chunk)] = chunk
        start += len(chunk)
