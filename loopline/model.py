"""The models, and their export as a SavedModel that serves raw uint8 images.

Every model takes uint8 images, [batch, height, width] (grey) or [batch, height, width, 3]
(colour), and scales them itself, so a served model cannot drift from the way it was
trained; it returns logits [batch, classes]. Each builds for any image shape its layers
leave pixels for (loopline/sizes.py counts its weights without TensorFlow).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

import keras
import tensorflow as tf
from keras import layers
from tensorflow.core.protobuf import fingerprint_pb2, saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

from loopline.files import seal
from loopline.params import dispatch_table

# MNIST's images and classes: the shape the models build for when none is given.
MNIST_SHAPE = (28, 28)
MNIST_CLASSES = 10


def _inputs(shape: tuple[int, ...]) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """uint8 images of `shape` ([height, width] grey or [height, width, 3]) as floats in
    [0, 1] with a channel axis."""
    images = keras.Input(shape=tuple(shape), dtype="uint8", name="images")
    scaled = layers.Rescaling(1 / 255)(images)
    if len(shape) == 3:
        return images, scaled
    return images, layers.Reshape((*shape, 1))(scaled)


def tutorial_model(
    shape: tuple[int, ...] = MNIST_SHAPE, classes: int = MNIST_CLASSES
) -> keras.Model:
    """The reference tutorial's model: Conv2D 32 3x3 -> Flatten -> Dense 128 -> Dense classes."""
    images, x = _inputs(shape)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    return keras.Model(images, layers.Dense(classes)(x), name="tutorial")


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

    def get_config(self) -> dict:
        return {**super().get_config(), "pixels": self.pixels}

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


def convnet_model(
    shape: tuple[int, ...] = MNIST_SHAPE, classes: int = MNIST_CLASSES
) -> keras.Model:
    """A stronger CNN: two conv/batch-norm blocks with pooling, dropout, light augmentation."""
    images, x = _inputs(shape)
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
    return keras.Model(images, layers.Dense(classes)(x), name="convnet")


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization (same weights, momentum and epsilon) of images [batch,
    height, width, channels], computed by TensorFlow's fused kernel.

    Keras 3 normalises with separate element-wise operations, and under mixed precision
    casts to float32 and back around them: a dozen passes over the activations forward and
    backward. tf.compat.v1.nn.fused_batch_norm is one oneDNN kernel each way, in bfloat16
    too (docs/research-log.md has what it gives the `fast` model under mixed_bfloat16).
    The moving variance follows the batch variance with Bessel's correction (n / (n - 1),
    n = batch x height x width), as Keras' does to within 0.02 % on MNIST's batches.
    """

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        training = bool(training and self.trainable)
        # In training, exponential_avg_factor makes the kernel also return the updated
        # moving averages.
        averaging = {"exponential_avg_factor": 1.0 - self.momentum} if training else {}
        outputs, moving_mean, moving_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma.value,
            self.beta.value,
            mean=self.moving_mean.value,
            variance=self.moving_variance.value,
            epsilon=self.epsilon,
            is_training=training,
            **averaging,
        )
        if training:
            self.moving_mean.assign(moving_mean)
            self.moving_variance.assign(moving_variance)
        return outputs


def _conv_bn_relu(x: keras.KerasTensor, filters: int, strides: int = 1) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False)(x)
    x = FusedBatchNormalization()(x)
    return layers.ReLU()(x)


def fast_model(shape: tuple[int, ...] = MNIST_SHAPE, classes: int = MNIST_CLASSES) -> keras.Model:
    """A lean CNN for `make best`: about 99.5 % in a few epochs, as it leaves 28x28 at once.

    Conv 3x3/2 (32) -> 14x14; conv 64, max-pool -> 7x7; conv 96, conv 96, max-pool -> 3x3;
    one linear layer on the 864 features. Batch norm (the fused kernel, see
    FusedBatchNormalization) and ReLU after every convolution, random shifts of up to 2
    pixels while training. The stride-2 stem does no 3x3 convolution at full size: as
    accurate as conv + pool at 28x28, and 1.3x as fast per step. Two 96-filter convolutions
    at 7x7 were as accurate as two of 128 for 0.62x those layers' FLOPs; 64 filters in the
    first of them (0.86x the step) or stride-2 convolutions instead of max pooling were no
    more accurate per second of training. 166,762 weights; 20.9
    MFLOP per image forward (convnet: 37.4). The research runs behind it are in
    docs/research-log.md.
    """
    images, x = _inputs(shape)
    x = RandomShift(2)(x)
    x = _conv_bn_relu(x, 32, strides=2)
    x = _conv_bn_relu(x, 64)
    x = layers.MaxPooling2D()(x)
    x = _conv_bn_relu(x, 96)
    x = _conv_bn_relu(x, 96)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    return keras.Model(images, layers.Dense(classes)(x), name="fast")


# The `model` param's choices (params.MODELS) and what builds each one.
MODELS = dispatch_table("model", tutorial=tutorial_model, convnet=convnet_model, fast=fast_model)


def build_model(
    name: str,
    shape: tuple[int, ...] = MNIST_SHAPE,
    classes: int = MNIST_CLASSES,
    precision: str = "float32",
) -> keras.Model:
    """A new model by its `model` param name, for images of `shape` ([height, width] or
    [height, width, 3]) and `classes` classes, with its variables created, computing in
    `precision` (the `precision` param: float32, or mixed_bfloat16: float32 variables,
    bfloat16 maths)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)  # what each layer takes when it is created
    try:
        return MODELS[name](tuple(shape), classes)
    finally:
        keras.config.set_dtype_policy(previous)


class Serving(tf.Module):
    """What the SavedModel holds: the variables the signature reads, and the signature.

    It holds the model's underlying tf.Variables, not the Keras model. A Keras 3 variable
    saves through a *copy*: its `_export_to_saved_model_graph` adds a second graph variable
    initialised from the real one, and the checkpoint's save and restore functions read and
    write that copy, while the traced signature reads the real one. `tf.saved_model.load`
    binds both to one object and works; the graph loader of `saved_model_cli run` and
    TensorFlow Serving, and `TFLiteConverter.from_saved_model`, restore the copy and leave the
    variables the signature reads empty ("Could not find variable dense_1/bias"; a TFLite
    model without weights). `model.export()` tracks both, so it works but stores every weight
    twice. Tracking only the tf.Variables stores each weight once, where every loader finds it.
    """

    def __init__(self, model: keras.Model) -> None:
        super().__init__()

        # The model stays in this closure, out of the object graph (see above).
        def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
            logits = model(images, training=False)
            return {
                "logits": logits,
                "probabilities": tf.nn.softmax(logits),
                "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
            }

        signature = tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8, name="images")
        self.serve = tf.function(serve, input_signature=[signature])
        read = {variable.ref() for variable in self.serve.get_concrete_function().variables}
        # In the model's order: the traced function lists its variables in set order, which
        # changes from process to process and would reorder the files' contents.
        self.weights = [
            variable.value
            for variable in model.variables
            if any(part.ref() in read for part in _parts(variable.value))
        ]
        kept = {part.ref() for variable in self.weights for part in _parts(variable)}
        assert read <= kept, "the signature reads a variable that is not the model's"


def float32_copy(model: keras.Model) -> keras.Model:
    """`model` computing in float32, with its weights: itself if it already does.

    The SavedModel serves in float32 whatever the `precision` of training: a graph with
    bfloat16 casts would not convert to TFLite or ONNX, and without AMX (most CPUs) it
    would be slower, not faster. The weights are float32 under mixed precision already.
    """
    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model

    def in_float32(layer: layers.Layer) -> layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=in_float32)
    copy.set_weights(model.get_weights())
    return copy


def _parts(variable: tf.Variable) -> tuple[tf.Variable, ...]:
    """A variable, or under a distribution strategy its copies (a traced function reads one)."""
    if isinstance(variable, tf.distribute.DistributedValues):
        return tuple(variable.values)
    return (variable,)


# What a SavedModel's user needs besides the signature, in a file beside it (see
# model_card): the class names, and how to turn an image into the input.
CARD = "assets.extra/loopline.json"


def model_card(classes: list[str], framing: str, dataset: str, shape: tuple[int, ...]) -> dict:
    """The SavedModel's class names and input, for anyone holding only its directory."""
    height, width = shape[:2]
    return {
        "dataset": dataset,
        "classes": list(classes),
        "input": {
            "signature": "serving_default",
            "name": "images",
            "dtype": "uint8",
            "shape": [None, *shape],
            "pixels": "0-255, " + ("RGB" if len(shape) == 3 else "grey"),
            "framing": framing,
            "how": (
                f"one handwritten digit, light on dark, its longer side scaled to "
                f"{round(height * 20 / 28)} pixels and centred by mass in {width}x{height}, "
                "as MNIST's"
                if framing == "digit"
                else f"the image resized to {width}x{height} (Pillow, bilinear)"
            ),
        },
        "outputs": {
            "logits": "float32 [batch, classes]",
            "probabilities": "float32 [batch, classes], softmax of the logits",
            "classes": "int32 [batch], the index in classes of the most probable class",
        },
    }


def export_saved_model(model: keras.Model, directory: str | Path, card: dict | None = None) -> None:
    """Write `model` as a SavedModel whose `serving_default` takes uint8 images of the
    model's input shape, with `card` (model_card) in assets.extra/loopline.json.

    The same weights give the same bytes, whatever the process did before (see
    `_make_reproducible`).
    """
    # Not model.save() (a .keras file in Keras 3) nor model.export() (which stores every
    # variable twice in Keras 3.15): tf.saved_model.save of the variables and one signature.
    serving = Serving(float32_copy(model))
    signature = serving.serve.get_concrete_function()
    tf.saved_model.save(serving, str(directory), signatures={"serving_default": signature})
    _make_reproducible(Path(directory))
    if card is None:  # a model of no data set: its classes are its output indices
        shape = tuple(model.input_shape[1:])
        classes = [str(index) for index in range(model.output_shape[-1])]
        card = model_card(classes, "resize", "", shape)
    write_card(Path(directory), card)


def write_card(directory: Path, card: dict) -> None:
    """Write `card` to the SavedModel at `directory` as assets.extra/loopline.json, with
    the SHA-256 of each of its files (`files`) and of the card's own content (`sha256`).

    Its readers (loopline/savedmodel.py) check them, and so refuse a file damaged or
    replaced since, which TensorFlow would load as it is (a variables.index and data of
    another model of the same layers) or fail on with a long traceback.
    """
    written = sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and path.parent.name != Path(CARD).parent.name
    )
    files = {path.relative_to(directory).as_posix(): _sha256(path) for path in written}
    card = seal({**card, "files": files})
    # assets.extra/ is the SavedModel format's place for "higher-level libraries and
    # users" (TF Serving keeps its warm-up requests there): no loader reads it, so the
    # graph, the signature and every converter stay as they were.
    path = directory / CARD
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# A function name that ends in a count taken from a process-wide counter.
_COUNTED = re.compile(r"(.*_)(\d+)")
# The attribute that names a function's argument; for captured inputs, a bare count.
_LABEL = "_user_specified_name"


def _make_reproducible(directory: Path) -> None:
    """Rewrite saved_model.pb and fingerprint.pb so they depend on the model alone.

    What differs between two saves of the same weights: (1) function names end in a
    process-wide counter (`__inference_serve_1234`), and the library lists functions by
    name; (2) the signature wrapper labels its captured inputs with such counts (`126`);
    (3) fingerprint.pb holds a random UUID, besides hashes of (1) and (2). TensorFlow's
    own fingerprint strips the counters for the same reason
    (tensorflow/core/graph/regularization/simple_delete.cc). Here they are renumbered in
    the order they were taken, which is the same in every process; the checkpoint's bytes
    depend only on the variables (tests/test_export.py compares whole directories).
    """
    path = directory / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library
        names = [function.signature.name for function in library.function]
        _replace_strings(saved_model, _renumbered(names))
        _renumber_counted_labels(library)
        functions = sorted(library.function, key=lambda function: function.signature.name)
        library.ClearField("function")
        library.function.extend(functions)
    path.write_bytes(saved_model.SerializeToString(deterministic=True))
    # The fingerprint as tf.saved_model.save computes it (private API: no public one
    # exists), with a UUID derived from the content instead of a random one.
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(
        fingerprinting.CreateFingerprintDef(str(directory))
    )
    fingerprint.ClearField("uuid")
    content = fingerprint.SerializeToString(deterministic=True)
    fingerprint.uuid = str(uuid.uuid5(uuid.NAMESPACE_OID, content.hex()).int)
    (directory / "fingerprint.pb").write_bytes(fingerprint.SerializeToString(deterministic=True))


def _renumbered(names: list[str]) -> dict[str, str]:
    """`name_<count>` -> `name_<rank of count>`; names without a count are kept."""
    counted = sorted(
        (int(_COUNTED.fullmatch(name)[2]), name) for name in names if _COUNTED.fullmatch(name)
    )
    return {name: f"{_COUNTED.fullmatch(name)[1]}{rank}" for rank, (_, name) in enumerate(counted)}


def _renumber_counted_labels(library) -> None:
    """Replace the argument labels that are bare counts (`126`) by their rank."""
    labels = [
        attributes.attr[_LABEL]
        for function in library.function
        for attributes in function.arg_attr.values()
        if _LABEL in attributes.attr and attributes.attr[_LABEL].s.isdigit()
    ]
    ranks = {count: rank for rank, count in enumerate(sorted({int(x.s) for x in labels}))}
    for label in labels:
        label.s = str(ranks[int(label.s)]).encode()


def _replace_strings(message, replacements: dict[str, str]) -> None:
    """Replace every string field and string map key of `message` found in `replacements`."""
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            _replace_in_map(field, value, replacements)
        elif field.type == field.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                _replace_strings(item, replacements)
        elif field.type == field.TYPE_STRING:
            if field.is_repeated:
                value[:] = [replacements.get(item, item) for item in value]
            elif value in replacements:
                setattr(message, field.name, replacements[value])


def _replace_in_map(field, mapping, replacements: dict[str, str]) -> None:
    holds_messages = field.message_type.fields_by_name["value"].type == field.TYPE_MESSAGE
    for key in [key for key in mapping if isinstance(key, str) and key in replacements]:
        if holds_messages:
            mapping[replacements[key]].CopyFrom(mapping[key])
        else:
            mapping[replacements[key]] = mapping[key]
        del mapping[key]
    for key in list(mapping):
        if holds_messages:
            _replace_strings(mapping[key], replacements)
        elif isinstance(mapping[key], str):
            mapping[key] = replacements.get(mapping[key], mapping[key])
