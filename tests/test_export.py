"""The SavedModel in the tools that deploy it, the export stage, and byte-identical saves.

Two tiny models serve every test: one trained on synthetic grey digits (28x28, as
MNIST's), one on a folder of colour images (12x10 RGB, three classes named by their
folders). Each consumer's answers are compared with the model's own (a converted model
without its weights answers NaN or zeros). `saved_model_cli run`, the graph loader of
TensorFlow Serving, loads the colour model here and the real pipeline's in
tests/test_end_to_end.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from loopline.model import build_model, export_saved_model, float32_copy, model_card
from loopline.records import data_meta, load_split
from loopline.savedmodel import load_card, load_classifier, predict
from stages import export
from tests.conftest import (
    files,
    image_folder,
    prepare_synthetic,
    synthetic_arrays,
    write_params,
    write_raw,
)

KINDS = ("grey digits", "colour")


@pytest.fixture(scope="module", params=KINDS)
def trained(request, tmp_path_factory) -> tuple[keras.Model, Path, Path]:
    """A tutorial model fitted on synthetic digits or on a colour image folder, its
    SavedModel (with its model card) and the prepared data."""
    directory = tmp_path_factory.mktemp("export")
    if request.param == "colour":
        raw = image_folder(directory / "raw", classes=3, per_class=80, shape=(12, 10, 3), test=20)
    else:
        raw = write_raw(directory / "raw", synthetic_arrays())
    data = prepare_synthetic(raw, directory / "prepared")
    meta = data_meta(data)
    images, labels = load_split(data, "train")
    keras.utils.set_random_seed(0)
    model = build_model("tutorial", meta.shape, len(meta.classes))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    model.fit(images, labels, batch_size=50, epochs=3, verbose=0)
    card = model_card(list(meta.classes), meta.framing, meta.dataset, meta.shape)
    export_saved_model(model, directory / "model", card)
    return model, directory / "model", data


@pytest.fixture(scope="module")
def test_split(trained) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic test images, their labels and the Keras model's logits."""
    model, _, data = trained
    images, labels = load_split(data, "test")
    logits = model(images, training=False).numpy()
    assert np.mean(logits.argmax(axis=1) == labels) > 0.9  # learnt, so classes mean something
    return images, labels, logits


def tflite_logits(content: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    runner = Interpreter(model_content=content).get_signature_runner("serving_default")
    return export.tflite_outputs(runner, images, batch_size=25)


def test_the_model_directory_alone_says_its_classes_and_input(trained):
    _, model_dir, data = trained
    meta = data_meta(data)
    card = json.loads((model_dir / "assets.extra/loopline.json").read_text())
    assert card["classes"] == list(meta.classes)
    assert card["input"]["shape"] == [None, *meta.shape] and card["input"]["dtype"] == "uint8"
    signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    spec = signature.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == card["input"]["shape"] and spec.dtype == tf.uint8
    loaded = load_card(model_dir, load_classifier(model_dir))
    assert loaded.classes == meta.classes and loaded.shape == meta.shape


def test_tf_serving_loader_answers_as_the_model(trained, test_split, tmp_path):
    """`saved_model_cli run`, TensorFlow's own CLI, loads the SavedModel through the graph
    loader that TensorFlow Serving shares."""
    model, model_dir, _ = trained
    if len(model.input_shape) != 4:
        pytest.skip("the grey digits' model: tests/test_end_to_end.py runs the real one")
    images, _, logits = test_split
    np.save(tmp_path / "images.npy", images[:20])
    command = [
        *(sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run"),
        *("--dir", str(model_dir), "--tag_set", "serve", "--signature_def", "serving_default"),
        *("--inputs", f"images={tmp_path / 'images.npy'}"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = re.search(r"Result for output key classes:\s*\[([\d\s]+)\]", result.stdout)
    assert printed, result.stdout[-2000:]
    assert [int(index) for index in printed[1].split()] == logits[:20].argmax(axis=1).tolist()


def test_tflite_float_model_holds_the_weights_and_answers_as_the_savedmodel(trained, test_split):
    _, model_dir, data = trained
    images, _, logits = test_split
    content = export.convert(model_dir, data, "float")
    outputs = tflite_logits(content, images)
    # A model converted without its weights reads uninitialised variables: NaN logits.
    np.testing.assert_allclose(outputs["logits"], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outputs["classes"], logits.argmax(axis=1))
    weights = sum(int(np.prod(v.shape)) for v in trained[0].weights) * 4
    assert len(content) > weights  # the float32 weights are inside


def test_quantized_tflite_models_keep_the_answers(trained, test_split):
    _, model_dir, data = trained
    images, _, logits = test_split
    float_bytes = sum(variable.numpy().nbytes for variable in trained[0].weights)
    for quantization in ("dynamic_range", "int8"):
        content = export.convert(model_dir, data, quantization)
        outputs = tflite_logits(content, images)
        assert np.mean(outputs["classes"] == logits.argmax(axis=1)) >= 0.95, quantization
        # int8 weights: about a quarter of the float32 weights' bytes.
        assert len(content) < 0.3 * float_bytes, quantization


def test_keras_tfsm_layer_loads_it(trained, test_split):
    _, model_dir, _ = trained
    images, _, logits = test_split
    layer = keras.layers.TFSMLayer(str(model_dir), call_endpoint="serving_default")
    outputs = layer(images)
    np.testing.assert_allclose(outputs["logits"].numpy(), logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        outputs["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), rtol=1e-5, atol=1e-6
    )


def onnx_logits(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """The SavedModel converted by tf2onnx, run by onnxruntime (skips where they don't import)."""
    try:
        from tf2onnx import convert, tf_loader
    except ImportError as error:  # tf2onnx pins old versions of its dependencies
        pytest.skip(f"tf2onnx does not import here ({error})")
    onnxruntime = pytest.importorskip("onnxruntime")
    # What `python -m tf2onnx.convert --saved-model DIR --output model.onnx` does.
    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        str(model_dir), None, None, "serve", ["serving_default"], return_tensors_to_rename=True
    )
    proto, _ = convert.from_graph_def(
        graph_def, input_names=inputs, output_names=outputs, tensors_to_rename=renames
    )
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].shape[1:] == list(images.shape[1:])
    return session.run(["logits"], {"images": images})[0]


def test_tf2onnx_converts_it_and_onnxruntime_agrees(trained, test_split):
    _, model_dir, _ = trained
    images, _, logits = test_split
    np.testing.assert_allclose(onnx_logits(model_dir, images), logits, rtol=1e-4, atol=1e-4)


def test_a_model_trained_in_mixed_bfloat16_is_served_in_float32_by_every_consumer(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("fast", precision="mixed_bfloat16")
    images = synthetic_arrays(train=40)["x_train"]
    model(images, training=True)  # moves the batch norms' statistics off their initial values
    export_saved_model(model, tmp_path / "model")
    saved_model = (tmp_path / "model" / "saved_model.pb").read_bytes()
    assert b"bfloat16" not in saved_model.lower()  # no bfloat16 cast, weight or kernel
    served = predict(load_classifier(tmp_path / "model"), images, 16)["logits"]
    np.testing.assert_allclose(served, float32_copy(model)(images), rtol=1e-5, atol=1e-5)
    # The same weights computing in bfloat16: 8 bits of mantissa, about 2 decimal digits.
    np.testing.assert_allclose(served, model(images), rtol=0.05, atol=0.05)
    tflite = tflite_logits(export.convert(tmp_path / "model", tmp_path, "float"), images)
    np.testing.assert_allclose(tflite["logits"], served, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(onnx_logits(tmp_path / "model", images), served, atol=1e-4)


def test_export_stage_writes_the_model_and_its_metrics(trained, tmp_path, monkeypatch, capsys):
    _, model_dir, data = trained
    params = write_params(tmp_path / "params.yaml", quantization="dynamic_range")
    tflite, metrics_path = tmp_path / "models" / "mnist.tflite", tmp_path / "export.json"
    arguments = [str(model_dir), str(data), str(tflite), str(metrics_path), "--params", str(params)]
    monkeypatch.setattr(sys, "argv", ["export", *arguments])
    export.main()
    metrics = json.loads(metrics_path.read_text())
    saved = predict(load_classifier(model_dir), load_split(data, "test")[0], 1000)["classes"]
    labels = load_split(data, "test")[1]
    assert set(metrics) == {"tflite_accuracy", "tflite_bytes"}
    assert abs(metrics["tflite_accuracy"] - np.mean(saved == labels)) <= 0.02
    assert metrics["tflite_bytes"] == tflite.stat().st_size
    # Wall-clock numbers are printed, never written to the tracked file.
    printed = capsys.readouterr().out
    assert "ms per image" in printed
    assert f"SavedModel {np.mean(saved == labels):.4f}" in printed
    assert not any("latency" in key or "seconds" in key for key in metrics)
    assert sorted(path.name for path in tflite.parent.iterdir()) == ["mnist.tflite"]


def test_export_refuses_an_unknown_quantization_in_one_line(trained, tmp_path, monkeypatch):
    _, model_dir, data = trained
    params = write_params(tmp_path / "params.yaml", quantization="int4")
    tflite = tmp_path / "mnist.tflite"
    arguments = [str(model_dir), str(data), str(tflite), str(tmp_path / "m.json")]
    monkeypatch.setattr(sys, "argv", ["export", *arguments, "--params", str(params)])
    with pytest.raises(ValueError, match="quantization: got 'int4', expected one of float"):
        export.main()
    assert not tflite.exists()


def test_the_same_weights_give_the_same_bytes(trained, tmp_path):
    # dvc.lock records the hash of models/mnist: a forced re-run must not change it.
    model = trained[0]
    # A second model object with the same weights: its variables are other objects (their
    # order in a traced function's set differs), and this process has traced more since.
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    export_saved_model(model, tmp_path / "first")
    export_saved_model(twin, tmp_path / "second")
    first, second = (files(tmp_path / name) for name in ("first", "second"))
    assert {"saved_model.pb", "fingerprint.pb", "variables/variables.index"} <= set(first)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs"
    # So is the TFLite model, whose hash dvc.lock records too.
    data = trained[2]
    tflite = [
        export.convert(tmp_path / name, data, "dynamic_range") for name in ("first", "second")
    ]
    assert tflite[0] == tflite[1]


def test_calibration_reads_the_first_images_from_only_the_shards_they_are_in(prepared):
    images, _ = load_split(prepared, "train")  # shards of 64, 64, 64 and 8 images
    np.testing.assert_array_equal(export.first_images(prepared, "train", 100), images[:100])
    np.testing.assert_array_equal(export.first_images(prepared, "train", 500), images)
    # The third shard changed after prepare: the first 128 images do not need it...
    third = prepared / "train-00002-of-00004.tfrecord.gz"
    third.write_bytes(third.read_bytes()[:-10])
    np.testing.assert_array_equal(export.first_images(prepared, "train", 128), images[:128])
    # ...the first 129 do, and it is hashed before it is read.
    with pytest.raises(ValueError, match=f"{third}: its SHA-256 is not the one in meta.json"):
        export.first_images(prepared, "train", 129)
