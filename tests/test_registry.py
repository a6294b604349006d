"""The model registry as docs/experiments.md shows it: GTO registers versions of dvc.yaml's `mnist`
artifact, `dvc push` stores them in a directory remote, `dvc artifacts get` fetches a
version by name into another directory, and the SavedModel it brings serves.

A tiny SavedModel with the project's serving signature stands in for a trained one.
"""

import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf
import yaml

from tests.conftest import REPO, scratch_env
from tests.test_end_to_end import run

PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())


class Classifier(tf.Module):
    """Predicts `digit` for every image, whatever it shows."""

    def __init__(self, digit: int):
        super().__init__()
        self.bias = tf.Variable(tf.one_hot(digit, 10))

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")])
    def serve(self, images):
        logits = tf.zeros([tf.shape(images)[0], 10]) + self.bias
        return {"logits": logits, "classes": tf.argmax(logits, axis=1)}


def save(digit: int, directory: Path) -> None:
    model = Classifier(digit)
    tf.saved_model.save(model, str(directory), signatures={"serving_default": model.serve})


def classes(directory: Path) -> list[int]:
    serve = tf.saved_model.load(str(directory)).signatures["serving_default"]
    return serve(images=tf.zeros([3, 28, 28], tf.uint8))["classes"].numpy().tolist()


def test_dvc_yaml_declares_the_models():
    artifacts = PIPELINE["artifacts"]
    # The model's folder is named by the data set: models/mnist with the default params.
    assert artifacts["mnist"]["path"] == "models/mnist"
    assert PIPELINE["stages"]["train"]["outs"][0] == "models/${dataset}"
    assert yaml.safe_load((REPO / "params.yaml").read_text())["dataset"] == "mnist"
    for artifact in artifacts.values():
        assert artifact["type"] == "model"
        assert artifact["desc"] and artifact["labels"]


def test_register_push_and_get_a_version_by_name(tmp_path):
    repo, storage, elsewhere = tmp_path / "repo", tmp_path / "storage", tmp_path / "elsewhere"
    env = {key: value for key, value in scratch_env().items() if not key.startswith("DVC_STUDIO")}
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "config", "core.analytics", "false"], repo, env)
    run(["dvc", "remote", "add", "--default", "storage", str(storage)], repo, env)
    # The project's artifacts, and a stage that outputs the model as train does.
    pipeline = {
        "stages": {"train": {"cmd": "true", "outs": ["models/mnist"]}},
        "artifacts": PIPELINE["artifacts"],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline))

    for digit, version in ((3, "v1.0.0"), (7, "v1.1.0")):
        save(digit, repo / "models/mnist")
        run(["dvc", "commit", "--force", "--quiet", "train"], repo, env)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", f"model {version}"], repo, env)
        run(["gto", "register", "mnist", "--version", version], repo, env)
        run(["dvc", "push", "--quiet"], repo, env)
    run(["gto", "assign", "mnist", "--version", "v1.0.0", "--stage", "prod"], repo, env)
    tags = run(["git", "tag"], repo, env).split()
    assert tags == ["mnist#prod#1", "mnist@v1.0.0", "mnist@v1.1.0"]

    # Another directory, as a user of the registry: by name, and version or stage, from the remote
    # (the repository's cache is gone, so the files must come from `storage`).
    shutil.rmtree(repo / ".dvc/cache")
    elsewhere.mkdir()
    wanted = {"by-version": ["--rev", "v1.0.0"], "by-stage": ["--stage", "prod"], "latest": []}
    for name, options in wanted.items():
        command = ["dvc", "artifacts", "get", str(repo), "mnist", *options]
        run([*command, "-o", str(elsewhere / name)], elsewhere, env)
    assert classes(elsewhere / "by-version") == [3, 3, 3]
    assert classes(elsewhere / "by-stage") == [3, 3, 3]
    assert classes(elsewhere / "latest") == [7, 7, 7]
    np.testing.assert_array_equal(classes(repo / "models/mnist"), [7, 7, 7])
