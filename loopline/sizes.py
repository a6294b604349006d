"""How many weights each model has for an image shape and a number of classes, in pure
Python, so that validate refuses a model that makes no sense for the data without importing
TensorFlow. tests/test_train.py checks each count against Keras' count_params().

Each function follows its model in loopline/model.py layer by layer; a count of None means
the images are too small for the model (a layer would have no pixels left).
"""

from __future__ import annotations

from loopline.params import dispatch_table

# More weights than this is refused: 200 MB of float32, and Adam keeps two more copies and
# the gradient, so about 800 MB for the training step alone, on one core's cache a few
# percent of it. MNIST's tutorial model has 2.8 million.
MAX_WEIGHTS = 50_000_000
KERNEL = 3  # every model's convolutions are 3x3


def _conv(channels_in: int, channels_out: int, bias: bool) -> int:
    return KERNEL * KERNEL * channels_in * channels_out + (channels_out if bias else 0)


def _batch_norm(channels: int) -> int:
    return 4 * channels  # gamma, beta, moving mean, moving variance


def _dense(inputs: int, outputs: int, bias: bool = True) -> int:
    return inputs * outputs + (outputs if bias else 0)


def tutorial_weights(height: int, width: int, channels: int, classes: int) -> int | None:
    """Conv2D 32 3x3 (valid) -> Flatten -> Dense 128 -> Dense classes."""
    if min(height, width) < KERNEL:
        return None
    features = (height - KERNEL + 1) * (width - KERNEL + 1) * 32
    return _conv(channels, 32, True) + _dense(features, 128) + _dense(128, classes)


def convnet_weights(height: int, width: int, channels: int, classes: int) -> int | None:
    """Two blocks of (conv, batch norm) x 2 + max-pool, Dense 128 (no bias) + batch norm."""
    if min(height, width) < 4:  # two 2x2 poolings
        return None
    blocks = _conv(channels, 32, False) + _conv(32, 32, False) + 2 * _batch_norm(32)
    blocks += _conv(32, 64, False) + _conv(64, 64, False) + 2 * _batch_norm(64)
    features = (height // 4) * (width // 4) * 64
    head = _dense(features, 128, bias=False) + _batch_norm(128) + _dense(128, classes)
    return blocks + head


def fast_weights(height: int, width: int, channels: int, classes: int) -> int | None:
    """Conv 32 stride 2, conv 64, max-pool, conv 96, conv 96, max-pool, Dense classes."""
    height, width = -(-height // 2), -(-width // 2)  # stride 2, same padding
    if min(height, width) < 4:  # two 2x2 poolings
        return None
    convolutions = _conv(channels, 32, False) + _conv(32, 64, False)
    convolutions += _conv(64, 96, False) + _conv(96, 96, False)
    norms = _batch_norm(32) + _batch_norm(64) + 2 * _batch_norm(96)
    features = (height // 4) * (width // 4) * 96
    return convolutions + norms + _dense(features, classes)


# The `model` param's choices, as loopline/model.py builds them.
WEIGHTS = dispatch_table(
    "model", tutorial=tutorial_weights, convnet=convnet_weights, fast=fast_weights
)
# The smallest image side each model takes.
SMALLEST = {"tutorial": KERNEL, "convnet": 4, "fast": 7}


def count_weights(model: str, shape: tuple[int, ...], classes: int) -> int | None:
    """The weights of `model` for images of `shape` ([height, width(, 3)]) and `classes`."""
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    return WEIGHTS[model](height, width, channels, classes)


def check_model_size(model: str, shape: tuple[int, ...], classes: int, path: str) -> None:
    """Refuse a model whose weights would not fit, or images too small for it, in one line
    that says what to choose instead."""
    size = "x".join(map(str, shape[1::-1])) + (" colour" if len(shape) == 3 else " grey")
    weights = count_weights(model, shape, classes)
    fits = [
        name
        for name in WEIGHTS
        if (count_weights(name, shape, classes) or MAX_WEIGHTS + 1) <= MAX_WEIGHTS
    ]
    instead = f"choose model: {' or '.join(fits)}" if fits else "choose a smaller image_size"
    if weights is None:
        raise ValueError(
            f"{path}: model: {model} needs images of at least {SMALLEST[model]}x"
            f"{SMALLEST[model]} pixels, these are {size}; {instead} (or a larger image_size "
            "in dataset.yaml)"
        )
    if weights > MAX_WEIGHTS:
        raise ValueError(
            f"{path}: model: {model} would hold {weights:,} weights for {size} images (at most "
            f"{MAX_WEIGHTS:,}); {instead}, or a smaller image_size in dataset.yaml"
        )
