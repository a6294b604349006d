"""evaluate: metrics against Keras' own metrics, models it must refuse, the mistakes grid."""

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from loopline import records
from loopline.mistakes import (
    GRID_COLUMNS,
    HEADER_HEIGHT,
    IMAGE_BOX,
    TILE_HEIGHT,
    TILE_WIDTH,
    Mistakes,
    draw_mistakes,
    most_confident_mistakes,
    write_mistakes,
)
from loopline.model import build_model, export_saved_model, model_card, write_card
from loopline.savedmodel import CARD, load_classifier, predict
from stages.evaluate import (
    compute_metrics,
    evaluate_test_split,
    per_class_accuracy,
    summarise,
    write_confusion,
)


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
    assert set(metrics) == {"accuracy", "loss"}


DIGITS = [str(digit) for digit in range(10)]


def test_per_class_accuracy_agrees_with_keras_on_each_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, 300)  # no 9: a class absent from the labels gets no row
    predictions = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 10, 300))
    names = [f"class {index}" for index in range(10)]
    rows = per_class_accuracy(labels, predictions, names)
    assert [row["class"] for row in rows] == names[:9]
    for index, row in enumerate(rows):
        chosen = labels == index
        accuracy = keras.metrics.Accuracy()
        accuracy.update_state(labels[chosen], predictions[chosen])
        assert row["accuracy"] == pytest.approx(float(accuracy.result()))
        assert row["error_rate"] == pytest.approx(1 - row["accuracy"])
        assert row["examples"] == int(chosen.sum())


def test_every_image_is_predicted_even_in_a_short_last_batch(tmp_path):
    model = build_model("tutorial")
    export_saved_model(model, tmp_path / "model")
    images = np.random.default_rng(1).integers(0, 255, (23, 28, 28), dtype=np.uint8)
    logits = predict(load_classifier(tmp_path / "model"), images, batch_size=10)["logits"]
    np.testing.assert_allclose(logits, model(images).numpy(), rtol=1e-5, atol=1e-5)


def test_the_test_split_streamed_in_batches_gives_the_whole_splits_results(prepared, tmp_path):
    model = build_model("tutorial")
    export_saved_model(model, tmp_path / "model")
    classifier = load_classifier(tmp_path / "model")
    images, labels = records.load_split(prepared, "test")  # 60 images in one shard
    outputs = predict(classifier, images, batch_size=1000)
    for batch_size in (7, 60, 1000):
        results = evaluate_test_split(classifier, prepared, batch_size)
        np.testing.assert_array_equal(results.labels, labels)
        np.testing.assert_array_equal(results.predictions, outputs["classes"])
        expected = compute_metrics(labels, outputs["logits"])
        assert summarise(labels, results.predictions, results.losses) == pytest.approx(expected)
        whole = Mistakes(images.shape[1:])
        whole.add(images, labels, outputs["probabilities"])
        np.testing.assert_array_equal(results.mistakes.indices, whole.indices)
        np.testing.assert_array_equal(results.mistakes.images, whole.images)


def test_confusion_rows(tmp_path):
    write_confusion(tmp_path / "confusion.csv", np.array([3, 1]), np.array([3, 7]), DIGITS)
    assert (tmp_path / "confusion.csv").read_text() == "actual,predicted\n3,3\n1,7\n"
    # Class names as they are, quoted where CSV needs it.
    names = ["cat", "hot, dog", 'say "cheese"']
    write_confusion(tmp_path / "named.csv", np.array([0, 1]), np.array([2, 1]), names)
    rows = list(csv.reader((tmp_path / "named.csv").read_text().splitlines()))
    assert rows == [["actual", "predicted"], ["cat", 'say "cheese"'], ["hot, dog", "hot, dog"]]


def test_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel here; run `dvc repro train`"):
        load_classifier(tmp_path / "model")


def test_damaged_model(tmp_path):
    model = tmp_path / "model"
    export_saved_model(build_model("tutorial"), model)
    (model / "saved_model.pb").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="saved_model.pb: its SHA-256 is not the one assets.extra"):
        load_classifier(model)
    # Even with a model card that vouches for it, TensorFlow's refusal is one line.
    write_card(model, json.loads((model / CARD).read_text()))
    with pytest.raises(ValueError, match="not a loadable SavedModel"):
        load_classifier(model)


def test_model_with_another_signature(tmp_path):
    module = tf.Module()
    module.serve = tf.function(
        lambda x: {"logits": tf.zeros([tf.shape(x)[0], 10])},
        input_signature=[tf.TensorSpec([None, 784], tf.float32, name="x")],
    )
    signatures = {"serving_default": module.serve}
    tf.saved_model.save(module, str(tmp_path / "model"), signatures=signatures)
    write_card(tmp_path / "model", model_card([str(n) for n in range(10)], "resize", "", (28, 28)))
    with pytest.raises(ValueError, match="expected images: uint8"):
        load_classifier(tmp_path / "model")


def predictions_with_mistakes(wrong: int, right: int = 10, seed: int = 3):
    """Random digits, their labels, and predictions that get the first `wrong` of them wrong.

    Returns the images, labels, probabilities (the SavedModel's softmax) and the wrong
    images' indices, most confident first.
    """
    rng = np.random.default_rng(seed)
    count = wrong + right
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = np.arange(count) % 10
    logits = np.zeros((count, 10), np.float32)
    logits[np.arange(wrong, count), labels[wrong:]] = 6.0
    # A distinct margin per mistake, in shuffled order: confidence grows with the margin.
    margins = rng.permutation(wrong) * 0.25 + 1.0
    logits[np.arange(wrong), (labels[:wrong] + 1) % 10] = margins
    return images, labels, tf.nn.softmax(logits).numpy(), np.argsort(-margins)


def enlarged(image: np.ndarray, digits: bool = True) -> np.ndarray:
    """How the grid shows an image: each pixel a square (of IMAGE_BOX // its side), digits
    as dark ink on white."""
    scale = IMAGE_BOX // max(image.shape[:2])
    block = np.ones((scale, scale, 1) if image.ndim == 3 else (scale, scale), np.uint8)
    return np.kron(255 - image if digits else image, block)


def tile(grid: Image.Image, position: int, size: int = IMAGE_BOX) -> np.ndarray:
    """The enlarged image in the grid's tile number `position` (row by row)."""
    left = (position % GRID_COLUMNS) * TILE_WIDTH + (TILE_WIDTH - size) // 2
    top = HEADER_HEIGHT + (position // GRID_COLUMNS) * TILE_HEIGHT + (IMAGE_BOX - size) // 2
    return np.asarray(grid)[top : top + size, left : left + size]


def test_mistakes_are_the_wrong_predictions_most_confident_first():
    _, labels, probabilities, expected = predictions_with_mistakes(wrong=30)
    chosen = most_confident_mistakes(labels, probabilities, count=24)
    np.testing.assert_array_equal(chosen, expected[:24])
    confidence = probabilities[chosen].max(axis=1)
    assert np.all(np.diff(confidence) < 0)


def test_equally_confident_mistakes_keep_test_set_order():
    labels = np.array([0, 1, 2, 3])
    probabilities = np.zeros((4, 10), np.float32)
    probabilities[[0, 1, 2, 3], [5, 1, 5, 5]] = [2.0, 9.0, 2.0, 3.0]
    chosen = most_confident_mistakes(labels, probabilities, count=10)
    np.testing.assert_array_equal(chosen, [3, 0, 2])


def test_mistakes_grid_shows_each_digit_enlarged_in_confidence_order():
    images, labels, probabilities, expected = predictions_with_mistakes(wrong=30)
    grid = draw_mistakes(images, labels, probabilities, DIGITS, count=24)
    assert grid.size == (GRID_COLUMNS * TILE_WIDTH, HEADER_HEIGHT + 4 * TILE_HEIGHT)
    for position, index in enumerate(expected[:24]):
        np.testing.assert_array_equal(tile(grid, position), enlarged(images[index]))


def test_colour_mistakes_are_shown_in_colour_and_as_they_are():
    images, labels, probabilities, expected = predictions_with_mistakes(wrong=5)
    rng = np.random.default_rng(4)
    colour = rng.integers(0, 256, (len(images), 16, 16, 3), dtype=np.uint8)
    names = [f"name {index}" for index in range(10)]
    grid = draw_mistakes(colour, labels, probabilities, names, digits=False)
    assert grid.mode == "RGB"
    for position, index in enumerate(expected):
        np.testing.assert_array_equal(tile(grid, position), enlarged(colour[index], digits=False))


def test_fewer_mistakes_than_tiles_make_fewer_rows():
    images, labels, probabilities, expected = predictions_with_mistakes(wrong=7)
    grid = draw_mistakes(images, labels, probabilities, DIGITS, count=24)
    assert grid.size == (GRID_COLUMNS * TILE_WIDTH, HEADER_HEIGHT + 2 * TILE_HEIGHT)
    np.testing.assert_array_equal(tile(grid, 6), enlarged(images[expected[6]]))


def mistakes_of(images, labels, probabilities, batch_size):
    """Mistakes, fed the test set `batch_size` images at a time."""
    mistakes = Mistakes(images.shape[1:])
    for start in range(0, len(labels), batch_size):
        batch = slice(start, start + batch_size)
        mistakes.add(images[batch], labels[batch], probabilities[batch])
    return mistakes


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_mistakes_kept_batch_by_batch_are_those_of_the_whole_test_set(batch_size):
    images, labels, probabilities, order = predictions_with_mistakes(wrong=60, right=40)
    # Ties across batches: equal confidences must keep test-set order, as over the whole.
    tied = [order[1] + 1, 61, 99]  # another wrong one, and two right ones made wrong
    probabilities[tied], labels[tied] = probabilities[order[1]], labels[order[1]]
    mistakes = mistakes_of(images, labels, probabilities, batch_size)
    expected = most_confident_mistakes(labels, probabilities, count=24)
    assert set(tied) < set(expected)
    np.testing.assert_array_equal(mistakes.indices, expected)
    np.testing.assert_array_equal(mistakes.images, images[expected])
    np.testing.assert_array_equal(mistakes.labels, labels[expected])
    np.testing.assert_array_equal(mistakes.probabilities, probabilities[expected])
    assert (mistakes.seen, mistakes.wrong) == (100, 62)
    assert len(mistakes.images) == 24  # never more held


def test_mistakes_png_is_the_same_bytes_every_time(tmp_path):
    images, labels, probabilities, _ = predictions_with_mistakes(wrong=30)
    whole = mistakes_of(images, labels, probabilities, batch_size=1000)
    write_mistakes(tmp_path / "first.png", whole, DIGITS)
    write_mistakes(tmp_path / "second.png", mistakes_of(images, labels, probabilities, 7), DIGITS)
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "second.png").read_bytes()
    with Image.open(tmp_path / "first.png") as image:
        assert image.format == "PNG"
        np.testing.assert_array_equal(
            np.asarray(image), np.asarray(draw_mistakes(images, labels, probabilities, DIGITS))
        )


def test_no_mistakes_gives_a_header_only_image(tmp_path):
    images, labels, probabilities, _ = predictions_with_mistakes(wrong=0)
    write_mistakes(tmp_path / "mistakes.png", mistakes_of(images, labels, probabilities, 4), DIGITS)
    with Image.open(tmp_path / "mistakes.png") as image:
        assert image.size == (GRID_COLUMNS * TILE_WIDTH, HEADER_HEIGHT)
        assert np.asarray(image).min() < 128  # the "No mistakes" line is written on it
    assert [path.name for path in tmp_path.iterdir()] == ["mistakes.png"]
