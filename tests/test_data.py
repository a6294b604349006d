"""prepare and the TFRecord format: round trips, determinism, and bad input refused."""

import json
import zipfile

import numpy as np
import pytest

from loopline import records
from loopline.files import seal
from loopline.survey import load
from stages.prepare import prepare
from tests.conftest import PREPARE_PARAMS as PARAMS
from tests.conftest import REPO, synthetic_arrays, write_raw


def test_round_trip_gives_back_the_same_pixels_and_labels(tmp_path):
    arrays = synthetic_arrays(train=150)
    images, labels = arrays["x_train"], arrays["y_train"]
    names = records.write_shards(images, labels, tmp_path, "train", examples_per_shard=64)
    assert names == [records.shard_name("train", index, 3) for index in range(3)]
    read_images, read_labels = records.read_arrays([tmp_path / name for name in names], (28, 28))
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_images.dtype == np.uint8 and read_labels.dtype == np.int32


@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (28, 28), (130, 129, 3)])
def test_an_example_is_serialized_as_tensorflow_serializes_it(shape):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for label in [0, 9, 127, 128, 999, 70_000]:  # labels of 1, 2 and 3 bytes
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        image[0, 0] = 0  # zeros among the pixels, where the framing ends
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        expected = example.SerializeToString(deterministic=True)
        assert records.serialize_example(image, np.int64(label)) == expected
        parsed = tf.train.Example.FromString(records.serialize_example(image, label))
        assert parsed.features.feature["label"].int64_list.value == [label]


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_a_split_read_a_batch_at_a_time_is_the_whole_split_in_order(prepared, batch_size):
    images, labels = records.load_split(prepared, "train")  # files of 64, 64, 64 and 8
    batches = list(records.read_batches(prepared, "train", batch_size))
    sizes = [len(batch_labels) for _, batch_labels in batches]
    assert sizes == [batch_size] * (200 // batch_size) + [200 % batch_size] * (200 % batch_size > 0)
    np.testing.assert_array_equal(np.concatenate([batch[0] for batch in batches]), images)
    np.testing.assert_array_equal(np.concatenate([batch[1] for batch in batches]), labels)


def test_the_shipped_data_is_mnist_and_matches_its_checksums(tmp_path):
    # prepare's own check of data/raw/mnist (shapes, label range, the file's SHA-256 in
    # dataset.yaml), then what the file's provenance says of MNIST: its first labels and
    # its class counts.
    data = load(REPO / "data/raw/mnist", tmp_path / "arrays")
    assert data.images["train"].shape == (60_000, 28, 28)
    assert data.images["test"].shape == (10_000, 28, 28)
    assert data.labels["train"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert data.labels["test"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert data.survey.splits["train"]["class_counts"] == train_counts
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.survey.splits["test"]["class_counts"] == test_counts
    assert data.survey.classes == [str(digit) for digit in range(10)]
    assert (data.survey.framing, data.survey.validation_size) == ("digit", 5000)


def test_prepare_splits_the_training_set_and_keeps_the_test_set(prepared, raw_data):
    _, arrays = raw_data
    meta = records.read_meta(prepared)
    train_images, train_labels = records.load_split(prepared, "train")
    validation_images, _ = records.load_split(prepared, "validation")
    test_images, test_labels = records.load_split(prepared, "test")
    assert (len(train_images), len(validation_images), len(test_images)) == (200, 40, 60)
    # The two splits partition the training set: every original image exactly once.
    together = np.concatenate([train_images, validation_images]).reshape(240, -1)
    original = arrays["x_train"].reshape(240, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, original))
    np.testing.assert_array_equal(test_images, arrays["x_test"])
    np.testing.assert_array_equal(test_labels, arrays["y_test"])
    assert meta["splits"]["train"]["class_counts"] == np.bincount(train_labels).tolist()
    assert len(meta["splits"]["train"]["shards"]) == 4  # 200 examples, 64 per shard
    assert meta["classes"] == [str(digit) for digit in range(10)] and meta["shape"] == [28, 28]


def test_prepare_is_byte_identical_and_seeded(tmp_path, raw_data, prepared):
    raw, _ = raw_data
    prepare(raw, tmp_path / "again", PARAMS)
    for path in prepared.iterdir():
        assert (tmp_path / "again" / path.name).read_bytes() == path.read_bytes(), path.name
    prepare(raw, tmp_path / "other", {**PARAMS, "seed": 1})
    assert records.read_meta(tmp_path / "other") != records.read_meta(prepared)


def test_max_train_examples_caps_the_training_split(tmp_path, raw_data):
    raw, _ = raw_data
    meta = prepare(raw, tmp_path / "out", {**PARAMS, "max_train_examples": 30})
    assert meta["splits"]["train"]["examples"] == 30
    assert meta["splits"]["validation"]["examples"] == 40


def bad_arrays(kind):
    arrays = synthetic_arrays(train=30, test=10)
    if kind == "missing array":
        del arrays["y_test"]
    elif kind == "wrong shape":
        arrays["x_train"] = arrays["x_train"].reshape(30, 784)
    elif kind == "wrong dtype":
        arrays["x_test"] = arrays["x_test"].astype(np.float32)
    elif kind == "label out of range":
        arrays["y_train"][3] = 10
    elif kind == "count mismatch":
        arrays["y_train"] = arrays["y_train"][:-1]
    elif kind == "empty split":
        arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
    return arrays


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing array", "mnist.npz: missing array 'y_test'"),
        ("wrong shape", r": x_train has shape \(30, 784\)"),
        ("wrong dtype", ": x_test has shape .* and dtype float32"),
        ("label out of range", ": y_train holds label 10, which classes in .*dataset.yaml"),
        ("count mismatch", ": x_train has 30 images but y_train 29 labels"),
        ("empty split", ": x_test is empty"),
    ],
)
def test_bad_raw_arrays_are_refused_and_nothing_is_written(tmp_path, kind, message):
    raw = write_raw(tmp_path / "raw", bad_arrays(kind))
    with pytest.raises(ValueError, match=f"{raw}.*{message}"):
        prepare(raw, tmp_path / "out", PARAMS)
    assert list(tmp_path.iterdir()) == [tmp_path / "raw"]


def test_raw_file_that_is_not_an_npz(tmp_path):
    raw = write_raw(tmp_path / "raw", synthetic_arrays(), checksums={})
    (raw / "mnist.npz").write_text("this is not a zip archive")
    with pytest.raises(ValueError, match=f"{raw / 'mnist.npz'}: not a readable .npz archive"):
        prepare(raw, tmp_path / "out", PARAMS)


def test_truncated_npz(tmp_path):
    raw = write_raw(tmp_path / "raw", synthetic_arrays(), checksums={})
    npz = raw / "mnist.npz"
    npz.write_bytes(npz.read_bytes()[:500])
    with pytest.raises(ValueError, match=f"{npz}: not a readable .npz archive"):
        prepare(raw, tmp_path / "out", PARAMS)


def test_missing_raw_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        prepare(tmp_path / "nowhere", tmp_path / "out", PARAMS)


def test_checksum_mismatch(tmp_path):
    arrays = synthetic_arrays()
    raw = write_raw(tmp_path / "raw", arrays)
    arrays["x_train"][0, 0, 0] ^= 1
    with zipfile.ZipFile(raw / "mnist.npz", "w") as archive:  # same names, one pixel different
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as file:
                np.lib.format.write_array(file, array)
    expected = f"{raw / 'mnist.npz'}: its SHA-256 is not the one in dataset.yaml"
    with pytest.raises(ValueError, match=expected):
        prepare(raw, tmp_path / "out", PARAMS)


def test_validation_size_larger_than_the_training_set(tmp_path, raw_data):
    raw, _ = raw_data
    with pytest.raises(ValueError, match="validation_size: got 240, expected fewer than"):
        prepare(raw, tmp_path / "out", {**PARAMS, "validation_size": 240})


@pytest.mark.parametrize(
    ("param", "described", "expected"),
    [(None, None, 24), (None, 30, 30), (0.25, 30, 60), (12, 0.5, 12), (None, 0.05, 12)],
)
def test_validation_size_is_a_count_a_fraction_or_the_data_sets_own(
    tmp_path, param, described, expected
):
    # 240 training images: a tenth by default, dataset.yaml's size, or params.yaml's.
    extra = {} if described is None else {"validation_size": described}
    raw = write_raw(tmp_path / "raw", synthetic_arrays(), **extra)
    meta = prepare(raw, tmp_path / "out", {**PARAMS, "validation_size": param})
    assert meta["splits"]["validation"]["examples"] == expected
    assert meta["splits"]["train"]["examples"] == 240 - expected


def test_failed_prepare_keeps_the_previous_output(prepared, raw_data):
    raw, _ = raw_data
    before = {path.name: path.read_bytes() for path in prepared.iterdir()}
    with pytest.raises(ValueError):
        prepare(raw, prepared, {**PARAMS, "validation_size": 10_000})
    assert {path.name: path.read_bytes() for path in prepared.iterdir()} == before
    assert [path.name for path in prepared.parent.iterdir() if ".tmp-" in path.name] == []


def test_missing_shard(prepared):
    (prepared / "train-00001-of-00004.tfrecord.gz").unlink()
    with pytest.raises(FileNotFoundError, match="train-00001-of-00004.tfrecord.gz: missing shard"):
        records.load_split(prepared, "train")


def test_truncated_shard(prepared):
    shard = prepared / "test-00000-of-00001.tfrecord.gz"
    shard.write_bytes(shard.read_bytes()[:-200])
    with pytest.raises(ValueError, match=f"{shard}: its SHA-256 is not the one in meta.json"):
        records.load_split(prepared, "test")
    # Past the hash check (as for a shard whose meta.json was rewritten to match), the
    # reader still refuses it.
    with pytest.raises(ValueError, match=f"{shard}: not a readable shard"):
        records.read_arrays([shard], (28, 28))


def test_corrupted_shard(prepared):
    shard = prepared / "validation-00000-of-00001.tfrecord.gz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{shard}: its SHA-256 is not the one in meta.json"):
        records.load_split(prepared, "validation")
    with pytest.raises(ValueError, match=f"{shard}: not a readable shard"):
        records.read_arrays([shard], (28, 28))


def test_records_with_the_wrong_features(prepared):
    import tensorflow as tf

    shard = prepared / "test-00000-of-00001.tfrecord.gz"
    options = tf.io.TFRecordOptions(compression_type=records.COMPRESSION)
    with tf.io.TFRecordWriter(str(shard), options) as writer:
        feature = {"pixels": tf.train.Feature(int64_list=tf.train.Int64List(value=[1, 2]))}
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writer.write(example.SerializeToString())
    with pytest.raises(ValueError, match=f"{shard}: not a readable shard"):
        records.read_arrays([shard], (28, 28))


def test_missing_meta(prepared):
    (prepared / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json: no such file; run `dvc repro prepare`"):
        records.load_split(prepared, "train")


def test_example_count_disagreeing_with_meta(prepared):
    meta = records.read_meta(prepared)
    meta["splits"]["test"]["examples"] = 61
    meta["splits"]["test"]["class_counts"][0] += 1  # consistent with the count, so far
    (prepared / "meta.json").write_text(json.dumps(seal(meta)))
    with pytest.raises(ValueError, match="60 test examples, but meta.json says 61"):
        records.load_split(prepared, "test")
