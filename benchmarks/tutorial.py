"""The reference tutorial's program, as written, for timing against this project.

This is the complete example of the tutorial this project grew from, "Custom Training Loop"
(a French write-up of TensorFlow's custom-training-loop example: a subclassed
Conv2D-Dense-Dense model trained with GradientTape in a per-step tf.function), with the
least change that lets it run offline: MNIST is read from data/raw/mnist/mnist.npz instead
of downloaded, and Keras 3 spells `reset_states()` as `reset_state()`. Everything else, the
subclassed model, the per-step `@tf.function`, 5 epochs of batch 32, the final test pass,
is the tutorial's.
Run    python -m benchmarks.tutorial   (benchmarks/pipeline_timings.py times it)
"""

import numpy as np
import tensorflow as tf
from tensorflow.keras import layers, losses, metrics, optimizers


class SimpleModel(tf.keras.Model):
    def __init__(self):
        super().__init__()
        self.conv1 = layers.Conv2D(32, (3, 3), activation="relu")
        self.flatten = layers.Flatten()
        self.dense1 = layers.Dense(128, activation="relu")
        self.dense2 = layers.Dense(10)

    def call(self, inputs):
        x = self.conv1(inputs)
        x = self.flatten(x)
        x = self.dense1(x)
        return self.dense2(x)


def main() -> None:
    model = SimpleModel()
    loss_fn = losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = optimizers.Adam()
    train_loss = metrics.Mean(name="train_loss")
    train_accuracy = metrics.SparseCategoricalAccuracy(name="train_accuracy")

    with np.load("data/raw/mnist/mnist.npz") as data:  # was tf.keras.datasets.mnist.load_data()
        x_train, y_train, x_test, y_test = (
            data[key] for key in ("x_train", "y_train", "x_test", "y_test")
        )
    x_train, x_test = x_train / 255.0, x_test / 255.0
    x_train = x_train[..., tf.newaxis]
    x_test = x_test[..., tf.newaxis]
    train_dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(60000).batch(32)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            loss = loss_fn(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        train_loss(loss)
        train_accuracy(labels, predictions)

    epochs = 5
    for epoch in range(epochs):
        for images, labels in train_dataset:
            train_step(images, labels)
        template = "Epoch {}, Loss: {}, Accuracy: {}"
        print(template.format(epoch + 1, train_loss.result(), train_accuracy.result() * 100))
        train_loss.reset_state()  # was reset_states()
        train_accuracy.reset_state()

    val_dataset = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(32)

    @tf.function
    def test_step(images, labels):
        predictions = model(images, training=False)
        loss = loss_fn(labels, predictions)
        train_loss(loss)
        train_accuracy(labels, predictions)

    for images, labels in val_dataset:
        test_step(images, labels)
    template = "Test Loss: {}, Test Accuracy: {}"
    print(template.format(train_loss.result(), train_accuracy.result() * 100))


if __name__ == "__main__":
    main()
