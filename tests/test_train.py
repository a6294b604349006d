"""The model, the compiled loop and the train stage, on tiny synthetic data.

Only the tests about XLA compile with it (jit_compile: true); the rest run the same steps
as plain TensorFlow graphs, which start in a fraction of the time.
"""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from benchmarks.time_to_accuracy import best_overrides
from loopline import loop, records
from loopline import params as params_module
from loopline.checkpoints import checkpoint_key
from loopline.data import (
    make_eval_dataset,
    make_train_dataset,
    shuffle_buffer_size,
    stream_train_dataset,
)
from loopline.distribute import STRATEGIES
from loopline.loop import SCHEDULES, Trainer
from loopline.model import (
    MODELS,
    FusedBatchNormalization,
    RandomShift,
    build_model,
    export_saved_model,
)
from loopline.params import check_train_params, dispatch_table
from loopline.progress import Progress, open_live
from loopline.sizes import MAX_WEIGHTS, SMALLEST, check_model_size, count_weights
from stages import train as train_stage
from stages.check_data import check_data
from stages.evaluate import load_classifier
from tests.conftest import (
    DEFAULT_PARAMS,
    REPO,
    files,
    saved_epoch,
    synthetic_arrays,
    write_params,
    write_raw,
)

# 200 training examples in batches of 16: 12 full batches, 6 groups of 2 steps per epoch.
TINY = {
    **DEFAULT_PARAMS,
    "epochs": 2,
    "batch_size": 16,
    "steps_per_execution": 2,
    "jit_compile": False,
    "eval_batch_size": 32,
    "seed": 3,
}
# The same, streamed from the shards: max_in_memory_mb 0 holds no training split in memory.
STREAMED = {**TINY, "max_in_memory_mb": 0}


def make_trainer(
    jit_compile=False,
    model="tutorial",
    steps_per_execution=1,
    precision="float32",
    label_smoothing=0.0,
):
    keras.utils.set_random_seed(0)
    return Trainer(
        build_model(model, precision=precision),
        keras.optimizers.Adam(1e-3),
        tf.distribute.get_strategy(),
        16,
        jit_compile,
        steps_per_execution,
        label_smoothing,
    )


def group_losses(trainer, iterator, calls):
    """The mean training loss of each of `calls` calls of run_steps."""
    losses = []
    for _ in range(calls):
        trainer.reset_metrics()
        trainer.run_steps(iterator)
        losses.append(float(trainer.train_loss.result()))
    return losses


@pytest.mark.parametrize("name", params_module.MODELS)
def test_models_map_uint8_images_to_ten_logits(name):
    model = build_model(name)  # MNIST's shape and classes by default
    logits = model(np.zeros((3, 28, 28), np.uint8), training=False)
    assert logits.shape == (3, 10) and logits.dtype == tf.float32


@pytest.mark.parametrize("name", params_module.MODELS)
@pytest.mark.parametrize(
    ("shape", "classes"),
    [((28, 28), 10), ((8, 8), 10), ((32, 32, 3), 3), ((13, 17), 2), ((7, 9, 3), 5), ((5, 6), 4)],
)
def test_weights_counted_without_tensorflow_are_keras_count(name, shape, classes):
    counted = count_weights(name, shape, classes)
    if min(shape[:2]) < SMALLEST[name]:
        assert counted is None
        with pytest.raises(ValueError):  # Keras cannot build it either
            build_model(name, shape, classes)
        return
    model = build_model(name, shape, classes)
    assert counted == model.count_params()
    images = np.zeros((2, *shape), np.uint8)
    assert model(images, training=False).shape == (2, classes)


def test_a_model_too_large_or_too_small_for_the_images_is_refused_with_a_choice():
    # The tutorial's dense layer at 224x224 colour: about 200 million weights.
    assert count_weights("tutorial", (224, 224, 3), 10) > 4 * MAX_WEIGHTS
    with pytest.raises(ValueError) as refused:
        check_model_size("tutorial", (224, 224, 3), 10, "params.yaml")
    message = str(refused.value)
    assert message.startswith("params.yaml: model: tutorial would hold 201,")
    assert "224x224 colour" in message and "choose model: convnet or fast" in message
    with pytest.raises(ValueError, match=r"model: fast needs images of at least 7x7 .* 5x6 grey"):
        check_model_size("fast", (6, 5), 10, "params.yaml")
    check_model_size("fast", (224, 224, 3), 10, "params.yaml")


def test_choices_are_listed_once_and_dispatched_on_the_same_names():
    assert tuple(MODELS) == params_module.MODELS
    assert tuple(STRATEGIES) == params_module.STRATEGIES
    assert tuple(SCHEDULES) == params_module.SCHEDULES
    with pytest.raises(RuntimeError, match="model: params.py lists"):
        dispatch_table("model", tutorial=None)


def test_the_fast_model_leaves_28x28_at_once_and_has_its_documented_size():
    model = build_model("fast")
    assert model.count_params() == 166_762  # as its docstring says
    # The stride-2 stem: the first convolution already works at 14x14.
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions[0].output.shape[1:3] == (14, 14)
    assert model.layers[-2].output.shape[1:] == (3 * 3 * 96,)  # flattened 3x3x96


@pytest.mark.parametrize("model", ["tutorial", "convnet", "fast"])
def test_loss_falls_on_a_repeated_batch(model):
    arrays = synthetic_arrays(train=16)
    trainer = make_trainer(model=model, steps_per_execution=2)
    dataset = tf.data.Dataset.from_tensors((arrays["x_train"], arrays["y_train"])).repeat()
    losses = group_losses(trainer, iter(dataset), calls=10)
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.compiled_train_steps.experimental_get_tracing_count() == 1
    assert int(trainer.optimizer.iterations) == 20


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_group_of_steps_trains_exactly_as_single_steps(jit_compile):
    arrays = synthetic_arrays(train=160)

    def train(steps_per_execution):
        trainer = make_trainer(jit_compile, steps_per_execution=steps_per_execution)
        dataset = make_train_dataset(arrays["x_train"], arrays["y_train"], 16, seed=1)
        iterator = iter(dataset.repeat())
        for _ in range(12 // steps_per_execution):
            trainer.run_steps(iterator)
        # The next batch is the 13th of the stream: every step took exactly one batch.
        next_labels = next(iterator)[1].numpy()
        return float(trainer.train_loss.result()), trainer.model.get_weights(), next_labels

    loss, weights, next_labels = train(4)
    expected_loss, expected_weights, expected_next = train(1)
    assert loss == expected_loss
    for weight, expected in zip(weights, expected_weights, strict=True):
        np.testing.assert_array_equal(weight, expected)
    np.testing.assert_array_equal(next_labels, expected_next)


def test_fused_batch_normalization_computes_what_keras_batch_normalization_does():
    images = np.random.default_rng(0).normal(2.0, 3.0, (16, 5, 5, 4)).astype(np.float32)
    keras_layer, fused = keras.layers.BatchNormalization(), FusedBatchNormalization()
    for layer in (keras_layer, fused):
        layer.build(images.shape)
        layer.gamma.assign([1.0, 2.0, 0.5, 1.5])
        layer.beta.assign([0.0, 1.0, -1.0, 0.5])
    np.testing.assert_allclose(
        fused(images, training=True), keras_layer(images, training=True), atol=1e-5
    )
    # The moving averages take one step towards the batch's statistics, the variance's
    # with Bessel's correction: n / (n - 1) for the 400 values of each channel.
    np.testing.assert_allclose(fused.moving_mean, keras_layer.moving_mean, rtol=1e-5)
    expected_variance = 0.99 + 0.01 * (keras_layer.moving_variance - 0.99) / 0.01 * 400 / 399
    np.testing.assert_allclose(fused.moving_variance, expected_variance, rtol=1e-5)
    fused.moving_variance.assign(keras_layer.moving_variance)
    np.testing.assert_allclose(fused(images), keras_layer(images), atol=1e-5)


def test_label_smoothing_spreads_its_share_of_each_target_over_the_classes():
    logits = np.random.default_rng(1).normal(size=(6, 10)).astype(np.float32)
    labels = np.array([0, 3, 9, 3, 5, 1])
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    targets = np.full((6, 10), 0.1 / 10) + 0.9 * np.eye(10)[labels]
    expected = -(targets * log_probabilities).sum(axis=1)
    computed = loop.smoothed_cross_entropy(0.1)(labels, logits)
    np.testing.assert_allclose(computed, expected, rtol=1e-5)
    # The trainer minimises it (its training loss is the smoothed one); validation is plain.
    arrays = synthetic_arrays(train=8)
    images, labels = arrays["x_train"], arrays["y_train"].astype(np.int32)
    trainer = make_trainer(label_smoothing=0.1)
    logits = trainer.model(images, training=True)
    trainer.train_step(images, labels)
    smoothed = loop.smoothed_cross_entropy(0.1)(labels, logits)
    assert float(trainer.train_loss.result()) == pytest.approx(float(np.mean(smoothed)), 1e-5)
    plain = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    assert float(np.mean(plain)) < float(np.mean(smoothed))


def test_mixed_bfloat16_computes_in_bfloat16_keeps_float32_weights_and_learns():
    trainer = make_trainer(model="fast", steps_per_execution=2, precision="mixed_bfloat16")
    convolutions = [layer for layer in trainer.model.layers if "conv" in layer.name]
    assert {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    norms = [layer for layer in trainer.model.layers if isinstance(layer, FusedBatchNormalization)]
    statistics = [variable for norm in norms for variable in norm.non_trainable_variables]
    weights = trainer.model.trainable_variables + statistics
    assert {variable.dtype for variable in weights} == {"float32"} and len(statistics) == 8
    assert keras.config.dtype_policy().name == "float32"  # building left the default alone
    arrays = synthetic_arrays(train=16)
    dataset = tf.data.Dataset.from_tensors((arrays["x_train"], arrays["y_train"])).repeat()
    losses = group_losses(trainer, iter(dataset), calls=10)
    assert losses[-1] < 0.5 * losses[0]


def test_random_shift_moves_each_image_by_at_most_its_pixels():
    keras.utils.set_random_seed(5)
    images = np.zeros((64, 28, 28, 1), np.float32)
    images[:, 10:18, 10:18] = np.arange(64, dtype=np.float32).reshape(64, 1, 1, 1) + 1
    layer = RandomShift(2)
    assert np.array_equal(layer(images, training=False), images)
    shifted = layer(images, training=True).numpy()
    offsets = set()
    for image, original in zip(shifted, images, strict=True):
        rows, columns = np.nonzero(image[..., 0])
        offset = (rows.min() - 10, columns.min() - 10)
        assert max(map(abs, offset)) <= 2
        expected = np.roll(original, offset, axis=(0, 1))  # nothing wraps: a border of 10
        np.testing.assert_array_equal(image, expected)
        offsets.add(offset)
    assert len(offsets) > 10  # of the 25 possible: the offsets vary from image to image
    keras.utils.set_random_seed(5)
    np.testing.assert_array_equal(RandomShift(2)(images, training=True), shifted)  # seeded


def test_cosine_schedule_decays_to_zero_over_the_whole_run():
    schedule = SCHEDULES["cosine"](0.01, 100)
    assert float(schedule(0)) == pytest.approx(0.01)
    assert float(schedule(50)) == pytest.approx(0.005)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    assert SCHEDULES["constant"](0.01, 100) == 0.01


def test_onecycle_schedule_warms_up_then_decays_like_its_formula():
    learning_rate, total_steps = 0.003, 100
    schedule = SCHEDULES["onecycle"](learning_rate, total_steps)
    steps = np.arange(total_steps + 1)
    # NumPy oracle: linear from lr/25 to lr over the first 20 % of the steps, then a cosine
    # from lr to 0 over the rest.
    warmup = 20
    start = learning_rate / 25
    rising = start + (learning_rate - start) * steps / warmup
    progress = (steps - warmup) / (total_steps - warmup)
    falling = learning_rate * 0.5 * (1 + np.cos(np.pi * progress))
    expected = np.where(steps < warmup, rising, falling)
    actual = np.array([float(schedule(step)) for step in steps])
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-9)
    assert actual[0] == pytest.approx(learning_rate / 25)
    assert actual.argmax() == warmup and actual[warmup] == pytest.approx(learning_rate)
    assert actual[-1] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(actual[: warmup + 1]) > 0)
    assert np.all(np.diff(actual[warmup:]) <= 0)


def test_evaluation_counts_every_example_once_despite_padding(tmp_path):
    arrays = synthetic_arrays(train=37)
    images, labels = arrays["x_train"], arrays["y_train"].astype(np.int32)
    # Four files of 10, 10, 10 and 7 examples: batches of 16 span them.
    names = records.write_shards(images, labels, tmp_path, "validation", 10)
    paths = [tmp_path / name for name in names]
    trainer = make_trainer()
    loss, accuracy = trainer.evaluate(make_eval_dataset(paths, (28, 28), 37, batch_size=16))
    # NumPy reference over the 37 real examples only.
    logits = trainer.model(images, training=False).numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_probabilities[np.arange(37), labels].mean(), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(axis=1) == labels))
    batches = list(make_eval_dataset(paths, (28, 28), 37, batch_size=16))
    assert [batch[0].shape[0] for batch in batches] == [16, 16, 16]
    assert sum(float(batch[2].numpy().sum()) for batch in batches) == 37
    np.testing.assert_array_equal(np.concatenate([batch[0] for batch in batches])[:37], images)
    np.testing.assert_array_equal(np.concatenate([batch[1] for batch in batches])[:37], labels)
    assert not np.any(batches[-1][0][5:]) and not np.any(batches[-1][2][5:])  # the padding


def test_training_batches_are_full_and_the_order_is_seeded():
    arrays = synthetic_arrays(train=50)

    def order(seed):
        dataset = make_train_dataset(arrays["x_train"], arrays["y_train"], 16, seed)
        return [batch[1].numpy().tolist() for batch in dataset]

    assert [len(batch) for batch in order(1)] == [16, 16, 16]
    assert order(1) == order(1) and order(1) != order(2)


def test_a_streamed_epoch_is_every_example_once_in_an_order_fixed_by_its_seed(prepared):
    paths = records.split_files(prepared, "train")  # 64, 64, 64 and 8 examples
    images, _ = records.load_split(prepared, "train")

    def epoch(seed, batch_size=16):
        batches = list(stream_train_dataset(paths, (28, 28), batch_size, seed))
        assert all(len(labels) == batch_size for _, labels in batches)
        return np.concatenate([images for images, _ in batches])

    first = epoch(seed=1)
    assert len(first) == 192  # 12 full batches of the 200; 8 left out
    assert len({bytes(image) for image in first}) == 192  # each example at most once
    assert {bytes(image) for image in epoch(1, batch_size=1)} == {bytes(i) for i in images}
    np.testing.assert_array_equal(epoch(seed=1), first)
    second = epoch(seed=2)
    assert not np.array_equal(second, first)
    # Mixed across the shards from the first batch on, not read one shard after another.
    shard_of = {bytes(image): index // 64 for index, image in enumerate(images)}
    assert len({shard_of[bytes(image)] for image in first[:16]}) > 1
    # Not merely the shards in another order: the examples are shuffled within them too.
    assert [shard_of[bytes(image)] for image in first[:64]] != sorted(
        shard_of[bytes(image)] for image in first[:64]
    )


def test_the_shuffle_buffer_is_bounded_in_images_and_in_bytes():
    assert shuffle_buffer_size((28, 28)) == 10_000  # 7.8 MB of MNIST digits
    assert shuffle_buffer_size((224, 224, 3)) == 445  # 64 MiB of colour photos
    assert shuffle_buffer_size((8192, 8192, 3)) == 1


def test_the_pipelines_run_without_the_autotuning_model(prepared):
    # Its thread made deleting each epoch's iterator wait seconds (data.pipeline_options).
    arrays = synthetic_arrays(train=50)
    paths = records.split_files(prepared, "train")
    pipelines = [
        make_train_dataset(arrays["x_train"], arrays["y_train"], 16, seed=1),
        stream_train_dataset(paths, (28, 28), 16, seed=1),
        make_eval_dataset(paths, (28, 28), 200, 16),
    ]
    for dataset in pipelines:
        assert dataset.options().autotune.enabled is False
        assert dataset.options().deterministic is True


def test_saved_model_round_trip_through_its_signature(tmp_path):
    model = build_model("tutorial")
    export_saved_model(model, tmp_path / "model")
    classify = tf.saved_model.load(str(tmp_path / "model")).signatures["serving_default"]
    images = synthetic_arrays(test=7)["x_test"][:7]
    outputs = classify(images=tf.constant(images))
    expected = model(images, training=False).numpy()
    np.testing.assert_allclose(outputs["logits"].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(axis=1))
    assert load_classifier(tmp_path / "model") is not None


@pytest.mark.parametrize("params", [TINY, STREAMED], ids=["in memory", "streamed"])
def test_train_learns(prepared, tmp_path, params):
    run = train_stage.train(prepared, params, tmp_path / "checkpoints")
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.history[-1]["validation_accuracy"] > 0.5  # 10 classes: chance is 0.1
    # Whole groups of 2 steps: 12 full batches per epoch, all of them used.
    assert int(run.trainer.optimizer.iterations) == 2 * 12


def test_an_epoch_is_whole_groups_and_the_cosine_schedule_ends_at_zero(prepared, tmp_path):
    # 200 examples make 8 full batches of 24, in groups of 3: 6 steps per epoch, 2 batches
    # left out.
    params = {
        **TINY,
        "batch_size": 24,
        "steps_per_execution": 3,
        "learning_rate_schedule": "cosine",
    }
    run = train_stage.train(prepared, params, tmp_path / "checkpoints")
    assert int(run.trainer.optimizer.iterations) == 2 * 6
    learning_rates = [row["learning_rate"] for row in run.history]
    assert learning_rates[0] == pytest.approx(0.0005)  # half-way along the cosine
    assert learning_rates[1] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("params", [TINY, STREAMED], ids=["in memory", "streamed"])
def test_a_crashed_run_resumes_at_its_last_epoch_with_the_same_dvclive_files(
    prepared, tmp_path, monkeypatch, capsys, params
):
    params = {**params, "epochs": 3}
    uninterrupted = train_stage.train(prepared, params, tmp_path / "a", tmp_path / "live-a")
    streamed = "streamed from their shards" in capsys.readouterr().out
    assert streamed == (params["max_in_memory_mb"] == 0)
    expected = files(tmp_path / "live-a")
    summary = json.loads(expected["metrics.json"])
    assert summary["step"] == 3
    assert summary["validation"]["accuracy"] == uninterrupted.history[-1]["validation_accuracy"]
    assert summary == {"step": 3, "validation": {"accuracy": summary["validation"]["accuracy"]}}
    assert expected["plots/metrics/learning_rate.tsv"].startswith(b"step\tlearning_rate\n1\t")
    rows = expected["plots/metrics/train/loss.tsv"].decode().splitlines()
    assert rows[0] == "step\tloss" and [row.split("\t")[0] for row in rows[1:]] == ["1", "2", "3"]
    real_run_epoch = train_stage.run_epoch

    def crash_in_epoch_3(trainer, dataset, steps, progress):
        if progress.description.startswith("epoch 3/"):
            raise KeyboardInterrupt  # stands for the process being killed
        real_run_epoch(trainer, dataset, steps, progress)

    monkeypatch.setattr(train_stage, "run_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_stage.train(prepared, params, tmp_path / "b", tmp_path / "live-b")
    assert not (tmp_path / "live-b").exists()  # no metrics from an unfinished run
    monkeypatch.setattr(train_stage, "run_epoch", real_run_epoch)
    resumed = train_stage.train(prepared, params, tmp_path / "b", tmp_path / "live-b")
    assert "resuming after epoch 2" in capsys.readouterr().out
    # Equal to the bit: the runs are deterministic, and resuming changes nothing.
    assert resumed.history == uninterrupted.history
    weights = zip(resumed.trainer.model.weights, uninterrupted.trainer.model.weights, strict=True)
    for resumed_weight, uninterrupted_weight in weights:
        np.testing.assert_array_equal(resumed_weight.numpy(), uninterrupted_weight.numpy())
    assert files(tmp_path / "live-b") == expected
    resumed.checkpoints.remove()
    assert not resumed.checkpoints.directory.exists()


def start_training(prepared, params, out, log):
    """`python -m stages.train`, as dvc.yaml runs it, writing under `out`, its output to
    `out`/`log`."""
    command = [
        *(sys.executable, "-m", "stages.train", str(prepared)),
        *(str(out / "model"), str(out / "metrics"), "--params", str(params)),
        *("--checkpoints", str(out / "checkpoints")),
    ]
    out.mkdir(exist_ok=True)
    with (out / log).open("w") as file:
        return subprocess.Popen(command, cwd=REPO, stdout=file, stderr=subprocess.STDOUT)


def test_a_streamed_run_killed_mid_way_resumes_to_the_uninterrupted_model(prepared, tmp_path):
    params = write_params(tmp_path / "params.yaml", **{**STREAMED, "epochs": 5})
    uninterrupted = start_training(prepared, params, tmp_path / "uninterrupted", "log")
    killed = start_training(prepared, params, tmp_path / "killed", "first.log")
    try:
        deadline = time.monotonic() + 120
        while not any(saved_epoch(run) for run in (tmp_path / "killed/checkpoints").glob("*")):
            assert killed.poll() is None, (tmp_path / "killed/first.log").read_text()
            assert time.monotonic() < deadline, "no epoch saved in 120 s"
            time.sleep(0.005)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
        assert uninterrupted.wait(timeout=120) == 0, (tmp_path / "uninterrupted/log").read_text()
    finally:
        for process in (uninterrupted, killed):
            process.kill()
            process.wait()
    first = (tmp_path / "killed/first.log").read_text()
    assert "streamed from their shards" in first and "epoch 5/5" not in first, first
    assert not (tmp_path / "killed/model").exists()
    # Run again, as `dvc repro` would: it resumes after the last epoch saved.
    resumed = start_training(prepared, params, tmp_path / "killed", "second.log")
    assert resumed.wait(timeout=120) == 0, (tmp_path / "killed/second.log").read_text()
    assert "train: resuming after epoch " in (tmp_path / "killed/second.log").read_text()
    # The same SavedModel bytes and the same metrics as the uninterrupted run.
    for output in ("model", "metrics"):
        expected = files(tmp_path / "uninterrupted" / output)
        assert expected and files(tmp_path / "killed" / output) == expected, output


def test_dvclive_stays_offline_without_a_studio_token(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_STUDIO_TOKEN", raising=False)
    monkeypatch.delenv("DVC_STUDIO_OFFLINE", raising=False)
    live = open_live(tmp_path / "live")
    assert os.environ["DVC_STUDIO_OFFLINE"] == "true"
    assert live._studio_events_to_skip == {"start", "data", "done"}  # nothing is posted


def test_the_checkpoint_key_changes_with_every_param_and_the_data(prepared):
    key = checkpoint_key(TINY, prepared)
    assert checkpoint_key(dict(TINY), prepared) == key
    for name, value in [("learning_rate", 0.002), ("epochs", 3), ("model", "convnet")]:
        assert checkpoint_key({**TINY, name: value}, prepared) != key
    (prepared / "meta.json").write_text((prepared / "meta.json").read_text() + " ")
    assert checkpoint_key(TINY, prepared) != key


def test_a_non_finite_loss_stops_training(prepared, tmp_path):
    with pytest.raises(ValueError, match=r"learning_rate: training ran away .* mean loss nan"):
        train_stage.train(prepared, {**TINY, "learning_rate": 1e30}, tmp_path / "c")


def test_cross_key_checks_name_the_keys():
    params = {**TINY, "batch_size": 16, "steps_per_execution": 4, "distribute": "mirrored"}
    check_train_params(params, train_examples=64, replicas=2)
    with pytest.raises(ValueError, match="batch_size: got 16, expected at most the 60 training"):
        check_train_params(params, train_examples=60, replicas=2)
    with pytest.raises(ValueError, match="batch_size: got 16, expected a multiple of the 3"):
        check_train_params(params, train_examples=64, replicas=3)


def test_max_pooling_models_are_refused_with_xla_and_determinism():
    # XLA has no deterministic max-pooling gradient (TF 2.21): the first step would fail
    # after DVC deleted the outputs, so the cross-key check refuses it first.
    base = {"batch_size": 16, "steps_per_execution": 4, "distribute": "none"}
    for model in params_module.MODELS:
        pooled = any(
            isinstance(layer, keras.layers.MaxPooling2D) for layer in MODELS[model]().layers
        )
        assert (model in params_module.MAX_POOLING_MODELS) == pooled
        params = {**base, "model": model, "jit_compile": True, "deterministic": True}
        if pooled:
            with pytest.raises(ValueError) as refused:
                check_train_params(params, train_examples=64, replicas=1)
            message = str(refused.value)
            assert f"model: {model} with jit_compile: true and deterministic: true" in message
            assert "-S jit_compile=false" in message and "\n" not in message
        else:
            check_train_params(params, train_examples=64, replicas=1)
        # Either setting off compiles.
        check_train_params({**params, "jit_compile": False}, train_examples=64, replicas=1)
        check_train_params({**params, "deterministic": False}, train_examples=64, replicas=1)


def test_the_max_pooling_check_is_what_the_step_needs():
    # The claim the check rests on, checked against TensorFlow: with determinism on, XLA
    # does not compile a max-pooling gradient. (Determinism is for the whole process and
    # stays on, as train() leaves it with `deterministic: true`, the default.)
    tf.config.experimental.enable_op_determinism()
    layer = keras.layers.MaxPooling2D()

    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer(x))
        return tape.gradient(y, x)

    x = tf.ones((2, 8, 8, 1))
    tf.function(gradient)(x)  # without XLA, it has a deterministic kernel
    # If a TensorFlow release adds the XLA one, this fails: drop the check in params.py.
    with pytest.raises(tf.errors.UnimplementedError, match="deterministic XLA"):
        tf.function(gradient, jit_compile=True)(x)


def test_validate_refuses_max_pooling_with_xla_and_determinism_before_writing(tmp_path):
    raw = write_raw(tmp_path / "raw", synthetic_arrays())
    summary = tmp_path / "dataset.json"
    check_data(raw, summary)
    params = write_params(
        tmp_path / "params.yaml", dataset="raw", model="fast", jit_compile=True, validation_size=40
    )
    out = tmp_path / "checked"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.validate",
            str(params),
            str(summary),
            str(out),
            "stages/train.py",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model: fast with jit_compile: true" in lines[0], lines
    assert "-S jit_compile=false" in lines[0]
    assert not out.exists()


def test_make_best_runs_valid_params_that_pass_the_cross_key_checks():
    printed = best_overrides()  # as benchmarks/time_to_accuracy.py reads them
    assert printed[::2] == ["-S"] * (len(printed) // 2)
    overrides = dict(item.split("=", 1) for item in printed[1::2])
    assert overrides["model"] == "fast" and overrides["learning_rate_schedule"] == "onecycle"
    document = {
        **DEFAULT_PARAMS,
        **{key: yaml.safe_load(value) for key, value in overrides.items()},
    }
    params = params_module.check_params(document, train_stage.PARAMS, "make best")
    check_train_params(params, train_examples=55_000, replicas=1)  # MNIST's training split


def test_batch_larger_than_the_data(prepared, tmp_path):
    with pytest.raises(ValueError, match="batch_size: got 500, expected at most the 200"):
        train_stage.train(prepared, {**TINY, "batch_size": 500}, tmp_path / "c")


def test_the_params_loader_does_not_import_tensorflow():
    code = "import sys, loopline.params; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_runaway_training_stops_naming_learning_rate_and_writes_nothing(
    prepared, tmp_path, monkeypatch
):
    params = tmp_path / "params.yaml"
    write_params(params, **{**TINY, "learning_rate": 1000.0})
    out = tmp_path / "out"
    arguments = [str(prepared), str(out / "model"), str(out / "train")]
    checkpoints = tmp_path / "checkpoints"
    monkeypatch.setattr(
        sys,
        "argv",
        ["train", *arguments, "--params", str(params), "--checkpoints", str(checkpoints)],
    )
    with pytest.raises(
        ValueError,
        match=r"^params.yaml: learning_rate: training ran away in "
        r"epoch 1/2: mean loss (\S+) over its first \d+ steps",
    ) as error:
        train_stage.main()
    loss = float(error.value.args[0].split("mean loss ")[1].split()[0])
    assert not loss <= loop.RUNAWAY_FACTOR * loop.untrained_loss(10)
    assert not any(out.rglob("*"))  # no model, no metrics
    assert not any(checkpoints.rglob("*"))  # nothing to resume: it would run away again


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_no_files(
    prepared, tmp_path, monkeypatch
):
    run = train_stage.train(prepared, {**TINY, "epochs": 1}, tmp_path / "checkpoints")
    checkpoints = run.checkpoints
    checkpoints.save(run.history)  # a first, complete checkpoint
    before = sorted(checkpoints.directory.rglob("*"))

    def save_on_a_full_disk(checkpoint_number):
        # What TensorFlow does: temporary files first, then the error.
        (checkpoints.directory / "ckpt-2_temp").mkdir()
        (checkpoints.directory / "ckpt-2_temp" / "part-00000-of-00001.data").write_bytes(b"x")
        raise tf.errors.ResourceExhaustedError(None, None, "ckpt-2_temp; No space left on device")

    monkeypatch.setattr(checkpoints.manager, "save", save_on_a_full_disk)
    with pytest.raises(OSError) as error:
        checkpoints.save([*run.history, {**run.history[0], "epoch": 2}])
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(checkpoints.directory)
    assert "No space left on device" in error.value.strerror
    assert "\n" not in str(error.value)
    assert sorted(checkpoints.directory.rglob("*")) == before
    assert checkpoints.restore() == run.history  # the last complete epoch is intact


def test_progress_lines_every_ten_seconds_without_a_terminal():
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(100, "epoch 1/5", terminal=False, stream=stream, clock=lambda: now[0])
    for done in range(4, 101, 4):
        now[0] = done * 0.5  # 2 s per group of 4 steps
        progress.update(done, loss=1 / done)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "epoch 1/5: step 20/100  loss 0.0500  40 s left"
    # The first call compiles: its time does not count towards the rate.
    stream, now[0] = io.StringIO(), 0.0
    progress = Progress(100, "epoch 1/5", terminal=False, stream=stream, clock=lambda: now[0])
    now[0] = 30.0
    progress.update(4, loss=2.0)
    now[0] = 40.0
    progress.update(8, loss=1.0)
    assert stream.getvalue().splitlines() == [
        "epoch 1/5: step 4/100  loss 2.0000",
        "epoch 1/5: step 8/100  loss 1.0000  230 s left",
    ]
    assert [line.split()[3] for line in lines] == ["20/100", "40/100", "60/100", "80/100"]
