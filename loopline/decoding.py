"""Image files -> pixels with Pillow alone, and the worker process that decodes them.

`decode` opens a file, applies its EXIF orientation, puts transparent pixels on white
paper, converts it to grey or RGB and resizes it: the one function behind prepare,
check_data and predict (through loopline/images.py), so that a served model sees exactly
the pixels its training data had.

`work` is a decoding worker's whole life: it reads pickled tasks (a chunk of files) on
stdin and writes each result, pickled, on stdout, until stdin closes. loopline/images.py
starts them (`python -c "from loopline.decoding import work; work()"`: a `__main__` of
their own, where a multiprocessing pool would import its parent's, a stage and TensorFlow
with it). This module imports neither NumPy nor TensorFlow, so a worker starts in about
40 ms of CPU (NumPy alone would add about 70).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

# Resizing, when an image's size differs from the data set's: Pillow's bilinear filter,
# which (unlike tf.image.resize's default) widens its support when it shrinks, so a large
# photo is averaged rather than sampled.
RESAMPLING = Image.Resampling.BILINEAR
# Pillow modes of one channel (with or without alpha): a grey image.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# The EXIF tag that says how the camera was held; values 5 to 8 store the image turned a
# quarter, so its width is the upright image's height.
ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)
# What Pillow raises for a file it cannot read, depending on the format and the damage.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageError(ValueError):
    """A file that is not a readable image."""


def channels_of(mode: str) -> int:
    """1 for a grey Pillow mode, 3 for any other (RGB, RGBA, P, CMYK, ...)."""
    return 1 if mode in GREY_MODES else 3


def _orientation(image: Image.Image) -> int:
    # A PNG's EXIF may follow its pixels: Pillow decodes the whole image to look for it.
    return image.getexif().get(ORIENTATION, 1) or 1


def _upright_shape(image: Image.Image, orientation: int) -> tuple[int, int, int]:
    """(height, width, channels) of `image` once turned upright, from its header."""
    width, height = image.size
    if orientation in TURNED:
        width, height = height, width
    return height, width, channels_of(image.mode)


def _on_white(image: Image.Image) -> Image.Image:
    # Transparent pixels usually hold black: show the drawing on white paper, as an image
    # viewer does, not on black.
    paper = Image.new("RGBA", image.size, "white")
    return Image.alpha_composite(paper, image.convert("RGBA"))


def _draft(image: Image.Image, size: tuple[int, int], orientation: int) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 of its size when it is to be shrunk at least that
    much (libjpeg scales while it decodes, several times faster than decoding the whole
    photo); the resize then does the rest. Other formats ignore it."""
    if image.format != "JPEG":
        return
    height, width = size
    if orientation in TURNED:
        height, width = width, height
    image.draft(None, (width, height))


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16- or 32-bit grey image as 8-bit grey: divided by 257 when it uses more than 8
    bits, clipped to 0..255. (convert("L") would clip everything above 255 to white.)"""
    import numpy as np  # only for these rare images: a worker starts without NumPy

    wide = np.asarray(image, np.float64)
    grey = np.clip(np.round(wide / 257) if wide.max() > 255 else wide, 0, 255)
    return Image.fromarray(grey.astype(np.uint8), "L")


def _converted(image: Image.Image, channels: int) -> Image.Image:
    """`image` in mode L (channels 1) or RGB, transparent pixels on white."""
    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
        image = _on_white(image)
    if image.mode.startswith("I") or image.mode == "F":
        image = _eight_bit(image)
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def decode(
    path: Path | str, size: tuple[int, int] | None, channels: int
) -> tuple[Image.Image, tuple[int, int, int]]:
    """The image file at `path`, upright, in mode L (channels 1) or RGB, resized to `size`
    (height, width) unless it is None or already that size; and its own upright (height,
    width, channels) before any of that."""
    try:
        with Image.open(path) as image:
            orientation = _orientation(image)
            shape = _upright_shape(image, orientation)
            if size is not None:
                _draft(image, size, orientation)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            image = _converted(image, channels)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), RESAMPLING)
            image.load()  # while the file is open: Pillow reads lazily
            return image, shape
    except UNREADABLE as error:
        raise ImageError(f"{path}: not a readable image ({_reason(error, path)})") from None


def inspect(path: Path | str, size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(height, width, channels) of the image at `path`, upright, after decoding all of it
    (a truncated or damaged file fails here, not only once its header is read): a JPEG at
    the scale `decode` would use for `size`, which reads just as much of the file."""
    try:
        with Image.open(path) as image:
            orientation = _orientation(image)
            shape = _upright_shape(image, orientation)
            if size is not None:
                _draft(image, size, orientation)
            image.load()
            return shape
    except UNREADABLE as error:
        raise ImageError(f"{path}: not a readable image ({_reason(error, path)})") from None


def read_header(path: Path | str) -> tuple[int, int, int]:
    """(height, width, channels) of the image at `path`, upright, from its header alone
    (a PNG's whole file, which may hold its EXIF after the pixels)."""
    try:
        with Image.open(path) as image:
            return _upright_shape(image, _orientation(image))
    except UNREADABLE as error:
        raise ImageError(f"{path}: not a readable image ({_reason(error, path)})") from None


def _reason(error: BaseException, path: Path | str) -> str:
    # Pillow's messages often quote the file name, which the line already starts with.
    text = str(error).replace(f" {str(path)!r}", "").replace(f" {path!r}", "")
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= 100 else text[:97] + "..."


# -- Tasks: what a worker (or the calling process) does with a chunk of files -------------


def decode_chunk(
    paths: list[Path] | list[str], size: tuple[int, int], channels: int
) -> tuple[bytes, list[tuple[int, int, int]]]:
    """`decode` of every path: their pixels one after the other (row-major, uint8), and
    each image's own shape."""
    pixels, shapes = [], []
    for path in paths:
        image, shape = decode(path, size, channels)
        pixels.append(image.tobytes())
        shapes.append(shape)
    return b"".join(pixels), shapes


def inspect_chunk(
    paths: list[Path] | list[str], size: tuple[int, int] | None
) -> list[tuple[int, int, int]]:
    """`inspect` of every path."""
    return [inspect(path, size) for path in paths]


# The byte a worker writes once it has started, before any result.
READY = b"!"
TASKS: dict[str, Callable] = {"decode": decode_chunk, "inspect": inspect_chunk}


def run_task(task: str, paths: list[Path] | list[str], *arguments) -> object:
    """TASKS[task] of a chunk; an unreadable file's ImageError is returned, not raised, so
    that a worker hands it back like any result."""
    try:
        return TASKS[task](paths, *arguments)
    except ImageError as error:
        return error


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer (task, paths, arguments) requests with their results until `requests` ends."""
    while True:
        try:
            task, paths, arguments = pickle.load(requests)
        except EOFError:
            return
        pickle.dump(run_task(task, paths, *arguments), replies, pickle.HIGHEST_PROTOCOL)
        replies.flush()


def work() -> None:
    """A decoding worker's life: serve stdin's requests on stdout until stdin closes."""
    # Ctrl-C reaches the whole process group: the process that started this one decides
    # (and ends the worker by closing its stdin or with SIGTERM), without a traceback here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stdout.buffer.write(READY)
        sys.stdout.buffer.flush()
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the starting process is gone: nobody wants the result
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error
