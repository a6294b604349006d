"""The model, the compiled loop and the train stage, on tiny synthetic data."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from stages import train as train_stage
from stages.evaluate import load_classifier
from stages.loop import Trainer, make_eval_dataset, make_train_dataset
from stages.model import build_model, export_saved_model
from stages.params import MODELS
from tests.conftest import DEFAULT_PARAMS, synthetic_arrays

TINY = {
    **DEFAULT_PARAMS,
    "epochs": 2,
    "batch_size": 16,
    "steps_per_execution": 4,
    "eval_batch_size": 32,
    "seed": 3,
}


def make_trainer(jit_compile=False, batch_size=16, model="tutorial", unrolled_steps=1):
    keras.utils.set_random_seed(0)
    return Trainer(
        build_model(model),
        keras.optimizers.Adam(1e-3),
        tf.distribute.get_strategy(),
        batch_size,
        jit_compile,
        unrolled_steps,
    )


@pytest.mark.parametrize("name", MODELS)
def test_models_map_uint8_images_to_ten_logits(name):
    model = build_model(name)
    logits = model(np.zeros((3, 28, 28), np.uint8), training=False)
    assert logits.shape == (3, 10) and logits.dtype == tf.float32


@pytest.mark.parametrize("jit_compile", [False, True])
def test_loss_falls_on_a_repeated_batch(jit_compile):
    arrays = synthetic_arrays(train=16)
    trainer = make_trainer(jit_compile)
    dataset = tf.data.Dataset.from_tensors((arrays["x_train"], arrays["y_train"])).repeat()
    losses = trainer.train_steps(iter(dataset), tf.constant(30)).numpy()
    assert losses.shape == (30,)
    assert losses[-1] < 0.5 * losses[0]
    assert trainer._train_chunk.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("jit_compile", [False, True])
def test_unrolled_steps_give_the_same_training_with_any_remainder(jit_compile):
    arrays = synthetic_arrays(train=160)

    def train(unrolled_steps, calls):
        trainer = make_trainer(jit_compile, unrolled_steps=unrolled_steps)
        dataset = make_train_dataset(arrays["x_train"], arrays["y_train"], 16, seed=1)
        iterator = iter(dataset.repeat())
        losses = np.concatenate(
            [trainer.train_steps(iterator, tf.constant(steps)).numpy() for steps in calls]
        )
        # The next batch is the 24th of the stream: every step took exactly one batch.
        next_labels = next(iterator)[1].numpy()
        return losses, trainer.model.get_weights(), next_labels, trainer

    # 23 steps: 10 = 2 x 4 + 2 remaining, 3 = 3 remaining only, 10 again.
    losses, weights, next_labels, trainer = train(4, [10, 3, 10])
    expected_losses, expected_weights, expected_next, _ = train(1, [23])
    assert losses.shape == (23,)
    np.testing.assert_array_equal(losses, expected_losses)
    for weight, expected in zip(weights, expected_weights, strict=True):
        np.testing.assert_array_equal(weight, expected)
    np.testing.assert_array_equal(next_labels, expected_next)
    # Two programs: 4 steps, and 1 for the remainders; no retracing per call.
    assert trainer._train_chunk.experimental_get_tracing_count() == 2


def test_evaluation_counts_every_example_once_despite_padding():
    arrays = synthetic_arrays(train=37)
    images, labels = arrays["x_train"], arrays["y_train"].astype(np.int32)
    trainer = make_trainer()
    loss, accuracy = trainer.evaluate(make_eval_dataset(images, labels, batch_size=16))
    # NumPy reference over the 37 real examples only.
    logits = trainer.model(images, training=False).numpy()
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_probabilities[np.arange(37), labels].mean(), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(axis=1) == labels))
    batches = list(make_eval_dataset(images, labels, batch_size=16))
    assert [batch[0].shape[0] for batch in batches] == [16, 16, 16]
    assert sum(float(batch[2].numpy().sum()) for batch in batches) == 37


def test_training_batches_are_full_and_the_order_is_seeded():
    arrays = synthetic_arrays(train=50)

    def order(seed):
        dataset = make_train_dataset(arrays["x_train"], arrays["y_train"], 16, seed)
        return [batch[1].numpy().tolist() for batch in dataset]

    assert [len(batch) for batch in order(1)] == [16, 16, 16]
    assert order(1) == order(1) and order(1) != order(2)


def test_in_memory_pipelines_run_without_the_autotuning_model():
    # Its thread made deleting each epoch's iterator wait seconds (loop.in_memory_options).
    arrays = synthetic_arrays(train=50)
    train = make_train_dataset(arrays["x_train"], arrays["y_train"], 16, seed=1)
    evaluation = make_eval_dataset(arrays["x_train"], arrays["y_train"], 16)
    assert train.options().autotune.enabled is False
    assert evaluation.options().autotune.enabled is False


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


def test_train_learns_and_is_deterministic(prepared, tmp_path):
    _, metrics, history, _ = train_stage.train(prepared, TINY, tmp_path / "checkpoints")
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert metrics["validation"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    _, again, history_again, _ = train_stage.train(prepared, TINY, tmp_path / "other")
    assert history_again == history
    assert {**again, "timing": None} == {**metrics, "timing": None}


def test_a_crashed_run_resumes_at_its_last_epoch(prepared, tmp_path, monkeypatch, capsys):
    params = {**TINY, "epochs": 3}
    _, uninterrupted, history, _ = train_stage.train(prepared, params, tmp_path / "a")
    real_run_epoch = train_stage.run_epoch

    def crash_in_epoch_3(trainer, dataset, steps, chunk, epoch, progress):
        if epoch == 3:
            raise KeyboardInterrupt  # stands for the process being killed
        real_run_epoch(trainer, dataset, steps, chunk, epoch, progress)

    monkeypatch.setattr(train_stage, "run_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_stage.train(prepared, params, tmp_path / "b")
    monkeypatch.setattr(train_stage, "run_epoch", real_run_epoch)
    _, resumed, resumed_history, checkpoints = train_stage.train(prepared, params, tmp_path / "b")
    assert "resuming after epoch 2" in capsys.readouterr().out
    assert resumed_history == history
    assert {**resumed, "timing": None} == {**uninterrupted, "timing": None}
    checkpoints.remove()
    assert not checkpoints.directory.exists()


def test_divergence_names_the_epoch_and_step(prepared, tmp_path):
    with pytest.raises(ValueError, match=r"training diverged: loss is (nan|inf) at epoch 1, step"):
        train_stage.train(prepared, {**TINY, "learning_rate": 1e30}, tmp_path / "c")


def test_batch_larger_than_the_data(prepared, tmp_path):
    with pytest.raises(ValueError, match="batch_size: got 500, expected at most the 200"):
        train_stage.train(prepared, {**TINY, "batch_size": 500}, tmp_path / "c")


def test_more_unrolled_steps_than_steps_per_call(prepared, tmp_path):
    with pytest.raises(ValueError, match=r"unrolled_steps: got 5, expected at most steps_per_exe"):
        train_stage.train(prepared, {**TINY, "unrolled_steps": 5}, tmp_path / "c")


def test_history_file_is_a_tsv_with_one_row_per_epoch(tmp_path):
    history = [
        {
            "epoch": 1,
            "train_loss": 0.5,
            "train_accuracy": 0.8,
            "validation_loss": 0.6,
            "validation_accuracy": 0.75,
            "learning_rate": 0.001,
        }
    ]
    train_stage.write_history(tmp_path / "history.tsv", history)
    lines = (tmp_path / "history.tsv").read_text().splitlines()
    assert lines == ["\t".join(train_stage.HISTORY_COLUMNS), "1\t0.5\t0.8\t0.6\t0.75\t0.001"]
