"""Artifacts damaged on disk: each file that one stage writes and another reads back, cut
short, with a flipped bit, emptied, replaced by a folder or by a link that leads nowhere, or
taken from another model.

Every reader either refuses it in one line that names the file (ValueError or
FileNotFoundError, as run_stage prints them) or reads exactly what was written: never a
traceback, never a value changed on the way. A checkpoint only saves time: a damaged one is
named in one line and the run starts afresh, with no variable half-restored.

Property tests feed random damage to each reader, on tiny artifacts built once; one test
per artifact runs the real stage command (as dvc.yaml runs it) on a damaged copy and checks
its one `error:` line, its exit code and that the previous outputs are intact.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline import files, records
from loopline.checkpoints import open_checkpoints
from loopline.distribute import make_strategy
from loopline.loop import build_trainer, steps_per_epoch
from loopline.model import build_model, export_saved_model, model_card
from loopline.params import load_params
from loopline.savedmodel import load_card, load_classifier
from loopline.survey import load, survey
from stages import train as train_stage
from stages.check_data import check_data
from stages.prepare import prepare
from stages.validate import read_summary
from tests.conftest import REPO, image_folder, scratch_env, write_params, write_raw

# Each example copies a tiny artifact and reads it: a few seconds per property.
FEW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SHAPE = (8, 8)  # the tutorial model on 8x8 images: 150k weights, 0.6 MB of variables
PARAMS = {
    "dataset": "raw",
    "seed": 0,
    "validation_size": 6,
    "max_train_examples": None,
    "examples_per_shard": 8,
    "epochs": 2,
    "batch_size": 4,
    "steps_per_execution": 1,
    "jit_compile": False,
    "eval_batch_size": 8,
}
HISTORY = [
    {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5,
        "validation_loss": 1.5 / epoch,
        "validation_accuracy": 0.25 * epoch,
        "learning_rate": 0.001,
    }
    for epoch in (1, 2)
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A tiny project's artifacts, each as its stage writes it: data/dataset.json,
    data/prepared, a SavedModel (models/raw) and another of the same layers (models/other),
    and .checkpoints/ holding epoch 2 of the run params.yaml describes."""
    root = tmp_path_factory.mktemp("built")
    raw = image_folder(root / "data/raw/raw", classes=3, per_class=10, shape=SHAPE, test=3)
    check_data(raw, root / "data/dataset.json")
    params = write_params(root / "params.yaml", **PARAMS)
    prepare(raw, root / "data/prepared", load_params(("seed", *PREPARE_KEYS), params))
    meta = records.data_meta(root / "data/prepared")
    card = model_card(list(meta.classes), meta.framing, meta.dataset, meta.shape)
    for name, seed in (("raw", 0), ("other", 1)):
        keras.utils.set_random_seed(seed)
        export_saved_model(build_model("tutorial", SHAPE, 3), root / "models" / name, card)
    trainer = make_trainer(root)
    for weight in trainer.model.weights:  # told apart from any fresh model's
        weight.assign(weight + 0.5)
    np.savez(root / "saved.npz", *[weight.numpy() for weight in trainer.model.weights])
    checkpoints = open_checkpoints(
        root / ".checkpoints", train_params(root), root / "data/prepared", trainer
    )
    checkpoints.save(HISTORY[:1])
    checkpoints.save(HISTORY)
    return root


PREPARE_KEYS = ("validation_size", "max_train_examples", "examples_per_shard")


def train_params(root: Path) -> dict:
    return load_params(train_stage.PARAMS, root / "params.yaml")


def make_trainer(root: Path):
    """The trainer train builds for the run params.yaml describes (its checkpoint key is
    train's), its weights freshly initialised."""
    params = train_params(root)
    data = root / "data/prepared"
    keras.utils.set_random_seed(params["seed"])
    steps = steps_per_epoch(data, params, 1)
    return build_trainer(params, make_strategy("none"), steps, records.data_meta(data))


# -- Damage -------------------------------------------------------------------------------

KINDS = ("cut short", "bit flipped", "emptied", "a folder", "a dangling link", "a link loop")


@st.composite
def damages(draw) -> tuple[str, float, int]:
    """What to do to a file: a kind, where in it (a fraction of its size) and which bit."""
    return (
        draw(st.sampled_from(KINDS)),
        draw(st.floats(0, 1, exclude_max=True)),
        draw(st.integers(0, 7)),
    )


def damage(path: Path, kind: str, where: float, bit: int) -> None:
    """Damage the file at `path` as `kind` says; every kind changes what it holds."""
    data = path.read_bytes()
    position = int(where * len(data))
    path.unlink()
    if kind == "cut short":
        path.write_bytes(data[:position])
    elif kind == "bit flipped":
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        path.write_bytes(bytes(flipped))
    elif kind == "emptied":
        path.write_bytes(b"")
    elif kind == "a folder":
        path.mkdir()
    elif kind == "a dangling link":
        path.symlink_to(path.with_name("missing"))
    else:
        path.symlink_to(path.name)  # itself


def assert_one_line(error: BaseException, where: Path) -> None:
    """A refusal as run_stage prints it: one line that starts with the file (or folder)."""
    assert isinstance(error, ValueError | FileNotFoundError), repr(error)
    message = str(error)
    assert "\n" not in message and message.startswith(str(where)), message


@contextlib.contextmanager
def copy_of(source: Path):
    """A scratch copy of `source`, removed after."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / source.name
        shutil.copytree(source, copy, symlinks=True)
        yield copy


def relative_files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


# -- Readers, fed random damage ------------------------------------------------------------


@FEW
@given(damage_=damages(), index=st.integers(0, 4))
def test_a_damaged_savedmodel_is_refused_or_read_as_written(built, damage_, index):
    original = built / "models/raw"
    names = relative_files(original)
    assert len(names) == 5  # saved_model.pb, fingerprint.pb, two variables files, the card
    with copy_of(original) as model:
        damage(model / names[index], *damage_)
        try:
            card = load_card(model, load_classifier(model))
        except Exception as error:  # asserted to be a one-line refusal
            assert_one_line(error, model)
        else:  # the card's layout changed (a space), not what it says
            assert names[index] == "assets.extra/loopline.json"
            assert card == load_card(original, load_classifier(original))


@settings(FEW, max_examples=15)
@given(damage_=damages(), data=st.data())
def test_damaged_prepared_data_is_refused_or_read_as_written(built, damage_, data):
    original = built / "data/prepared"
    name = data.draw(st.sampled_from(relative_files(original)))
    split = "train" if name == "meta.json" else name.split("-")[0]
    with copy_of(original) as prepared:
        damage(prepared / name, *damage_)
        try:
            images, labels = records.load_split(prepared, split)
        except Exception as error:
            assert_one_line(error, prepared)
        else:
            expected = records.load_split(original, split)
            np.testing.assert_array_equal(images, expected[0])
            np.testing.assert_array_equal(labels, expected[1])


@FEW
@given(damage_=damages())
def test_a_damaged_data_summary_is_refused_or_read_as_written(built, damage_, tmp_path):
    summary = tmp_path / "dataset.json"
    shutil.copy(built / "data/dataset.json", summary)
    damage(summary, *damage_)
    try:
        read = read_summary(summary)
    except Exception as error:
        assert_one_line(error, summary)
    else:
        assert read == read_summary(built / "data/dataset.json")
    files.remove_path(summary)


@settings(FEW, max_examples=15)
@given(damage_=damages(), data=st.data())
def test_a_damaged_checkpoint_is_dropped_in_one_line_or_resumed_whole(built, damage_, data):
    original = next((built / ".checkpoints").iterdir())
    name = data.draw(st.sampled_from(relative_files(original)))
    with copy_of(built / ".checkpoints") as root:
        damage(root / original.name / name, *damage_)
        trainer = make_trainer(built)
        fresh = [weight.numpy() for weight in trainer.model.weights]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            checkpoints = open_checkpoints(
                root, train_params(built), built / "data/prepared", trainer
            )
            history = checkpoints.restore()
        weights = [weight.numpy() for weight in trainer.model.weights]
    if history:  # resumed: everything as saved (a checkpoint's date changes nothing)
        assert history == HISTORY and printed.getvalue() == ""
        assert int(checkpoints.epoch.numpy()) == 2
        with np.load(built / "saved.npz") as saved:
            for weight, expected in zip(weights, saved.values(), strict=True):
                np.testing.assert_array_equal(weight, expected)
    else:  # afresh: said once, and no variable restored
        lines = printed.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"train: {root}"), lines
        assert lines[0].endswith("starting afresh without the checkpoint (it only saves time)")
        for weight, initial in zip(weights, fresh, strict=True):
            np.testing.assert_array_equal(weight, initial)


@FEW
@given(damage_=damages(), data=st.data())
def test_a_damaged_image_folder_is_refused_in_one_line(built, damage_, data):
    with copy_of(built / "data/raw/raw") as folder:
        (folder / "dataset.yaml").write_text("description: tiny\nimage_size: [8, 8]\n")
        name = data.draw(st.sampled_from(relative_files(folder)))
        damage(folder / name, *damage_)
        try:
            survey(folder)
        except Exception as error:
            assert_one_line(error, folder)
        # A bit flipped in a PNG's pixels or in dataset.yaml's text may still decode: not
        # damage anything can tell from data, and no traceback either way.


@FEW
@given(damage_=damages())
def test_damaged_arrays_are_refused_in_one_line_or_read_as_written(damage_, tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    arrays = {
        "x_train": np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8),
        "y_train": np.array([0, 1, 0, 1], np.uint8),
        "x_test": np.full((2, 8, 8), 7, np.uint8),
        "y_test": np.array([0, 1], np.uint8),
    }
    write_raw(folder, arrays)
    (folder / "dataset.yaml").unlink()  # no checksums: the archive's own CRCs must tell
    damage(folder / "mnist.npz", *damage_)
    try:
        loaded = load(folder, folder / "scratch")
    except Exception as error:
        assert_one_line(error, folder)
    else:  # a bit of the archive's metadata (a file's date) that no array depends on
        for split in ("train", "test"):
            np.testing.assert_array_equal(loaded.images[split], arrays[f"x_{split}"])
            np.testing.assert_array_equal(loaded.labels[split], arrays[f"y_{split}"])


# -- The real stage commands, on a damaged copy --------------------------------------------


def project_copy(built: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    return root


def run_command(root: Path, *command: str) -> subprocess.CompletedProcess:
    """`command` as dvc.yaml runs it (`python -m stages.X ...`), in the project `root`."""
    env = {**scratch_env(), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *command], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def previous_outputs(root: Path, *paths: str) -> dict[str, bytes]:
    """Stand-ins for the outputs of a previous good run, which a refusal must keep."""
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(f"previous {path}\n".encode())
    return {path: (root / path).read_bytes() for path in paths}


def assert_refused(result: subprocess.CompletedProcess, start: str, fix: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "XNNPACK" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {start}") and lines[0].endswith(fix), lines[0]


def test_validate_refuses_a_damaged_data_summary_and_keeps_its_outputs(built, tmp_path):
    root = project_copy(built, tmp_path)
    command = ("-m", "stages.validate", "params.yaml", "data/dataset.json", "data/params")
    modules = [str(REPO / "stages" / f"{name}.py") for name in ("prepare", "train")]
    assert run_command(root, *command, *modules).returncode == 0
    kept = files_of(root / "data/params")
    damage(root / "data/dataset.json", "cut short", 0.5, 0)
    result = run_command(root, *command, *modules)
    assert_refused(result, "data/dataset.json: not valid JSON", "`dvc repro -f check_data`")
    assert files_of(root / "data/params") == kept


def test_evaluate_refuses_a_savedmodel_cut_short_and_keeps_the_metrics(built, tmp_path):
    root = project_copy(built, tmp_path)
    names = ("eval.json", "per_class.json", "confusion.csv", "mistakes.png")
    outputs = [f"metrics/{name}" for name in names]
    kept = previous_outputs(root, *outputs)
    variables = "models/raw/variables/variables.data-00000-of-00001"
    damage(root / variables, "cut short", 0.5, 0)
    result = run_command(root, "-m", "stages.evaluate", "models/raw", "data/prepared", *outputs)
    assert_refused(
        result,
        f"{variables}: its SHA-256 is not the one assets.extra/loopline.json records",
        "restore it with `dvc checkout models/raw` or re-create it with `dvc repro -f train`",
    )
    assert {path: (root / path).read_bytes() for path in outputs} == kept


def test_export_refuses_a_shard_cut_short_and_keeps_both_outputs(built, tmp_path):
    root = project_copy(built, tmp_path)
    outputs = ["models/raw.tflite", "metrics/export.json"]
    kept = previous_outputs(root, *outputs)
    shard = "data/prepared/test-00000-of-00002.tfrecord.gz"
    damage(root / shard, "cut short", 0.5, 0)
    result = run_command(root, "-m", "stages.export", "models/raw", "data/prepared", *outputs)
    assert_refused(
        result,
        f"{shard}: its SHA-256 is not the one in meta.json",
        "`dvc checkout data/prepared` or re-create it with `dvc repro -f prepare`",
    )
    assert {path: (root / path).read_bytes() for path in outputs} == kept


def test_train_says_a_checkpoint_is_damaged_and_trains_without_it(built, tmp_path):
    root = project_copy(built, tmp_path)
    checkpoint = next((root / ".checkpoints").iterdir())
    damage(checkpoint / "ckpt-2.data-00000-of-00001", "bit flipped", 0.5, 3)
    # DVCLive's folder replaced by a file: train writes it anew.
    (root / "metrics").mkdir()
    (root / "metrics/train").write_text("not a folder")
    result = run_command(root, "-m", "stages.train", "data/prepared", "models/new", "metrics/train")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    said = [line for line in lines if ".checkpoints" in line]
    assert len(said) == 1 and re.fullmatch(
        rf"train: \.checkpoints/{checkpoint.name}/ckpt-2: damaged \(.*Checksum does not match.*\); "
        r"starting afresh without the checkpoint \(it only saves time\)",
        said[0],
    ), lines
    epochs = [line.split()[1] for line in lines if line.startswith("epoch ")]
    assert epochs == ["1/2", "2/2"]
    load_card(root / "models/new", load_classifier(root / "models/new"))
    assert json.loads((root / "metrics/train/metrics.json").read_text())["step"] == 2
    assert not checkpoint.exists()


def files_of(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in relative_files(directory)}


def test_check_data_refuses_a_description_that_leads_nowhere(built, tmp_path):
    # A link that leads nowhere (dvc's symlink cache without its object, say) was taken
    # for no dataset.yaml at all: its classes and checksums silently ignored.
    root = project_copy(built, tmp_path)
    kept = previous_outputs(root, "data/dataset.json")
    (root / "data/raw/raw/dataset.yaml").symlink_to("../../cache/gone")
    result = run_command(root, "-m", "stages.check_data", "data/raw/raw", "data/dataset.json")
    assert_refused(
        result,
        "data/raw/raw/dataset.yaml: a symbolic link that leads nowhere",
        "restore it, or remove it (docs/own-data.md)",
    )
    assert (root / "data/dataset.json").read_bytes() == kept["data/dataset.json"]


def committed_copy(tmp_path: Path) -> Path:
    """What `make docs` and `make repro`'s machine record read, copied from the repository."""
    root = tmp_path / "repository"
    for name in ("docs", "benchmarks", "loopline", "metrics"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("README.md", "params.yaml", "dvc.yaml", "dvc.lock"):
        shutil.copy(REPO / name, root / name)
    return root


def test_make_docs_and_the_machine_record_name_a_damaged_committed_file(tmp_path):
    root = committed_copy(tmp_path)
    docs = ("docs/generate.py", "--check")
    assert run_command(root, *docs).returncode == 0
    damage(root / "metrics/eval.json", "cut short", 0.5, 0)
    result = run_command(root, *docs)
    assert_refused(
        result,
        f"{root}/metrics/eval.json: not valid JSON",
        "restore it with `git checkout -- metrics/eval.json`",
    )
    (root / "metrics/eval.json").write_text('{"loss": 0.1}\n')  # valid JSON, a key missing
    assert_refused(
        run_command(root, *docs),
        "metrics/eval.json",
        "restore them with `git checkout -- FILE`, or re-create them (`dvc repro`, the benchmark)",
    )
    record = ("-m", "benchmarks.machine", "--record", "metrics/machine.json")
    damage(root / "metrics/machine.json", "emptied", 0, 0)
    assert_refused(
        run_command(root, *record),
        "metrics/machine.json: not valid JSON (an empty file)",
        "(delete it if this machine trained)",
    )


# -- What no random damage makes: files of another model, hand edits, odd files ----------


def test_a_savedmodel_with_another_models_variables_is_refused(built, tmp_path):
    # The same layers, other weights: TensorFlow would load it and answer with them.
    model = project_copy(built, tmp_path) / "models/raw"
    shutil.rmtree(model / "variables")
    shutil.copytree(built / "models/other/variables", model / "variables")
    with pytest.raises(ValueError, match=r"variables/variables\.data-00000-of-00001: its SHA-256"):
        load_classifier(model)


@pytest.mark.parametrize("edit", ["another model's card", "a class renamed by hand"])
def test_a_card_that_does_not_belong_to_its_model_is_refused(built, tmp_path, edit):
    model = project_copy(built, tmp_path) / "models/raw"
    card = model / "assets.extra/loopline.json"
    if edit == "another model's card":
        shutil.copy(built / "models/other/assets.extra/loopline.json", card)
        expected = "fingerprint.pb: its SHA-256 is not the one assets.extra/loopline.json"
    else:
        card.write_text(card.read_text().replace('"class 0"', '"class zero"'))
        expected = "loopline.json: its content does not match its sha256"
    with pytest.raises(ValueError, match=expected):
        load_classifier(model)


def test_export_writes_nothing_for_a_model_of_another_data_set(built, tmp_path):
    from stages import export

    other = tmp_path / "model"
    card = model_card(["a", "b"], "resize", "other", (6, 6))
    export_saved_model(build_model("tutorial", (6, 6), 2), other, card)
    tflite = tmp_path / "model.tflite"
    params = {"quantization": "float", "eval_batch_size": 8}
    refusal = r"a model of 2 classes for images of \[6, 6\], but .* \(another data set\)"
    with pytest.raises(ValueError, match=refusal):
        export.export(other, built / "data/prepared", tflite, params)
    assert not tflite.exists()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: path.mkdir(), "a folder where a file should be"),
        (lambda path: path.symlink_to(path.name), r"a symbolic link that leads nowhere \(.*\)"),
        (lambda path: os.mkfifo(path), "not a regular file"),
    ],
)
def test_what_stands_in_for_a_file_is_named(tmp_path, make, reason):
    path = tmp_path / "meta.json"
    make(path)
    with pytest.raises(ValueError, match=f"^{path}: {reason}; the fix$"):
        files.read_json(path, "the fix")


def test_a_file_that_cannot_be_read_is_one_line(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("{}")
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads it anyway: a file that no one may read
        path.unlink()
        path.symlink_to("/proc/sys/vm/drop_caches")  # write-only, even for root
        if not path.is_file() or os.access(path, os.R_OK):
            pytest.skip("no unreadable file here")
    with pytest.raises(ValueError, match=f"^{path}: cannot be read \\(Permission denied\\); fix$"):
        files.read_json(path, "fix")


def test_a_sealed_document_is_read_back_without_its_seal(tmp_path):
    document = {"classes": ["a", "b"], "loss": 0.25, "nested": {"x": [1, 2]}}
    path = tmp_path / "document.json"
    files.write_json(path, files.seal(document))
    assert files.read_sealed_json(path, "") == document
    path.write_text(json.dumps(json.loads(path.read_text()), indent=8))  # layout only
    assert files.read_sealed_json(path, "") == document
    path.write_text(path.read_text().replace("0.25", "0.26"))
    with pytest.raises(ValueError, match="its content does not match its sha256"):
        files.read_sealed_json(path, "")
