"""The models, and their export as a SavedModel that serves raw uint8 images.

Every model takes uint8 images [batch, 28, 28] and scales them itself, so a served model
cannot drift from the way it was trained; it returns logits [batch, 10].
"""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf
from keras import layers

from stages.params import dispatch_table
from stages.records import IMAGE_SIZE, NUM_CLASSES


def _inputs() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    images = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE), dtype="uint8", name="images")
    scaled = layers.Rescaling(1 / 255)(images)
    return images, layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1))(scaled)


def tutorial_model() -> keras.Model:
    """The reference tutorial's model: Conv2D 32 3x3 -> Flatten -> Dense 128 -> Dense 10."""
    images, x = _inputs()
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return keras.Model(images, layers.Dense(NUM_CLASSES)(x), name="tutorial")


class RandomShift(layers.Layer):
    """Shift each training image by up to `pixels` in each direction (zeros fill the edge).

    Keras' RandomTranslation does the same with ImageProjectiveTransformV3, which XLA
    cannot compile; gathering rows and columns of a padded image compiles, and draws its
    offsets from a seeded Keras SeedGenerator, so runs repeat and resume exactly.
    """

    def __init__(self, pixels: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pixels = pixels
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        if not training:
            return images
        size, pixels = images.shape[1], self.pixels
        padded = tf.pad(images, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]])
        offsets = keras.random.randint(
            (tf.shape(images)[0], 2), 0, 2 * pixels + 1, seed=self.seed_generator
        )
        rows = offsets[:, :1] + tf.range(size)  # [batch, size]: the rows each image keeps
        columns = offsets[:, 1:] + tf.range(size)
        shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
        return tf.gather(shifted, columns, axis=2, batch_dims=1)


def _conv_block(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    return layers.MaxPooling2D()(x)


def convnet_model() -> keras.Model:
    """A stronger CNN: two conv/batch-norm blocks with pooling, dropout, light augmentation."""
    images, x = _inputs()
    # Shifts of up to 2 pixels: MNIST's digits are centred by mass, not exactly.
    x = RandomShift(2)(x)
    x = _conv_block(x, 32)
    x = _conv_block(x, 64)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(128, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(images, layers.Dense(NUM_CLASSES)(x), name="convnet")


# The `model` param's choices (params.MODELS) and what builds each one.
MODELS = dispatch_table("model", tutorial=tutorial_model, convnet=convnet_model)


def build_model(name: str) -> keras.Model:
    """A new model by its `model` param name, with its variables created."""
    return MODELS[name]()


class Serving(tf.Module):
    """What the SavedModel holds: the model and one signature over raw uint8 images."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__()
        self.model = model

    @tf.function(
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.uint8, name="images")]
    )
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = self.model(images, training=False)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
        }


def export_saved_model(model: keras.Model, directory: str | Path) -> None:
    """Write `model` as a SavedModel whose `serving_default` takes uint8 [batch, 28, 28]."""
    # Not model.save() (a .keras file in Keras 3) nor model.export() (which stores every
    # variable twice in Keras 3.15): tf.saved_model.save with an explicit signature.
    serving = Serving(model)
    tf.saved_model.save(serving, str(directory), signatures={"serving_default": serving.serve})
