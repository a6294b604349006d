"""evaluate: metrics against Keras' own metrics, and models it must refuse."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stages.evaluate import compute_metrics, load_classifier, predict_logits, write_confusion
from stages.model import build_model, export_saved_model


def test_metrics_agree_with_keras_metrics():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    logits = rng.normal(size=(500, 10)).astype(np.float32)
    logits[np.arange(500)[:300], labels[:300]] += 3  # about 60% right
    metrics = compute_metrics(labels, logits)
    accuracy = keras.metrics.SparseCategoricalAccuracy()
    accuracy.update_state(labels, logits)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert metrics["accuracy"] == pytest.approx(float(accuracy.result()))
    assert metrics["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert metrics["examples"] == 500
    for digit, value in metrics["per_class_accuracy"].items():
        chosen = labels == int(digit)
        assert value == pytest.approx(np.mean(logits[chosen].argmax(axis=1) == int(digit)))


def test_every_image_is_predicted_even_in_a_short_last_batch(tmp_path):
    model = build_model("tutorial")
    export_saved_model(model, tmp_path / "model")
    images = np.random.default_rng(1).integers(0, 255, (23, 28, 28), dtype=np.uint8)
    logits = predict_logits(load_classifier(tmp_path / "model"), images, batch_size=10)
    np.testing.assert_allclose(logits, model(images).numpy(), rtol=1e-5, atol=1e-5)


def test_confusion_rows(tmp_path):
    write_confusion(tmp_path / "confusion.csv", np.array([3, 1]), np.array([3, 7]))
    assert (tmp_path / "confusion.csv").read_text() == "actual,predicted\n3,3\n1,7\n"


def test_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel here; run `dvc repro train`"):
        load_classifier(tmp_path / "model")


def test_damaged_model(tmp_path):
    export_saved_model(build_model("tutorial"), tmp_path / "model")
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a loadable SavedModel"):
        load_classifier(tmp_path / "model")


def test_model_with_another_signature(tmp_path):
    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"logits": tf.zeros([tf.shape(x)[0], 10])},
        input_signature=[tf.TensorSpec([None, 784], tf.float32, name="x")],
    )
    signatures = {"serving_default": module.serve}
    tf.saved_model.save(module, str(tmp_path / "model"), signatures=signatures)
    with pytest.raises(ValueError, match="expected images: uint8"):
        load_classifier(tmp_path / "model")
