"""Faults, looked for: generated params.yaml and meta.json documents, tampered shards,
paths that escape, full disks, signals sent to a real stage process.

Each case must end in a clean refusal: one line (ValueError, FileNotFoundError or an
OSError naming the path written), never a traceback, never a metric from bad data.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopline import files, records
from loopline.dataset import read_description
from loopline.params import SPECS, load_params
from stages.prepare import prepare
from tests.conftest import DEFAULT_PARAMS, PREPARE_PARAMS, REPO, synthetic_arrays, write_raw

FEW = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def assert_one_line(error: BaseException, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and message.startswith(str(path)), message


# -- params.yaml -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
documents = st.fixed_dictionaries(
    {},
    optional={key: json_values | st.just(DEFAULT_PARAMS[key]) for key in SPECS},
).flatmap(
    lambda document: (
        st.just(document)
        | st.dictionaries(st.text(max_size=10), json_values, max_size=2).map(
            lambda extra: {**document, **extra}
        )
    )
)


@FEW
@given(document=documents)
def test_generated_params_documents_are_accepted_or_refused_in_one_line(tmp_path, document):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        params = load_params(tuple(SPECS), path)
    except (ValueError, FileNotFoundError) as error:
        assert_one_line(error, path)
    else:
        assert set(params) == set(SPECS)
        for key, value in params.items():
            assert value is None or isinstance(value, SPECS[key].kind)


@FEW
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_as_params_yaml_is_refused_in_one_line(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_params(("seed",), path)
    except (ValueError, FileNotFoundError) as error:
        assert_one_line(error, path)


@FEW
@given(data=st.binary(max_size=100))
def test_arbitrary_bytes_as_params_yaml_are_refused_in_one_line(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"seed: 1\n" + data)
    try:
        load_params(("seed",), path)
    except (ValueError, FileNotFoundError) as error:
        assert_one_line(error, path)


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(DEFAULT_PARAMS) + "epochs: 7\n")
    with pytest.raises(ValueError, match=r"key 'epochs' given twice \(lines \d+ and \d+\)"):
        load_params(("epochs",), path)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(yaml.safe_dump(DEFAULT_PARAMS).encode() + b"# caf\xe9\n")
    with pytest.raises(ValueError, match=f"{path}: not UTF-8 text"):
        load_params(("epochs",), path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 10**23),
        ("epochs", 10_001),
        ("seed", 2**32),
        ("batch_size", 10**9),
        ("eval_batch_size", 2**40),
        ("examples_per_shard", 10**12),
        ("validation_size", 10**30),
        ("max_train_examples", 10**30),
        ("steps_per_execution", 1000),
        ("learning_rate", 10**400),
    ],
)
def test_absurd_sizes_are_refused_naming_the_key_and_the_limit(tmp_path, key, value):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**DEFAULT_PARAMS, key: value}))
    with pytest.raises(ValueError, match=f"{path}: {key}: got .*, expected") as caught:
        load_params(tuple(SPECS), path)
    assert len(str(caught.value)) < 200


def test_largest_allowed_values_pass(tmp_path):
    path = tmp_path / "params.yaml"
    largest = {"epochs": 10_000, "seed": 2**32 - 1, "batch_size": 65_536}
    path.write_text(yaml.safe_dump({**DEFAULT_PARAMS, **largest}))
    assert load_params(tuple(largest), path) == largest


# -- meta.json and the shards ------------------------------------------------------------


@pytest.fixture(scope="module")
def clean_prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    raw = write_raw(root / "raw", synthetic_arrays())
    prepare(raw, root / "prepared", PREPARE_PARAMS)
    return root / "prepared"


@pytest.fixture
def prepared_copy(clean_prepared, tmp_path) -> Path:
    copy = tmp_path / "prepared"
    shutil.copytree(clean_prepared, copy)
    return copy


def _replace(document: dict, where: tuple[str, ...], value) -> dict:
    document = json.loads(json.dumps(document))
    if not where:
        return value
    node = document
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    return document


@FEW
@given(
    where=st.sampled_from(
        [
            (),
            ("splits",),
            ("splits", "test"),
            ("splits", "test", "examples"),
            ("splits", "test", "class_counts"),
            ("splits", "test", "shards"),
            ("splits", "test", "shards", "test-00000-of-00001.tfrecord.gz"),
            ("splits", "test", "shards", "../../elsewhere.tfrecord.gz"),
            ("splits", "test", "shards", "/etc/passwd"),
        ]
    ),
    value=json_values,
)
def test_generated_meta_documents_are_accepted_or_refused_in_one_line(
    clean_prepared, tmp_path, where, value
):
    directory = tmp_path / "prepared"
    if not directory.exists():
        shutil.copytree(clean_prepared, directory)
    meta = _replace(records.read_meta(clean_prepared), where, value)
    # Sealed as prepare seals it: the checks of each field are what is tested.
    (directory / "meta.json").write_text(
        json.dumps(files.seal(meta) if isinstance(meta, dict) else meta)
    )
    try:
        _, labels = records.load_split(directory, "test")
    except (ValueError, FileNotFoundError) as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(directory)), message
    else:  # only a change that leaves the test split as it was may pass
        expected = records.read_meta(clean_prepared)["splits"]["test"]
        assert len(labels) == expected["examples"]
        assert np.bincount(labels, minlength=10).tolist() == expected["class_counts"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda test: test.update(examples="60"), "test.examples is '60', expected an integer"),
        (lambda test: test.update(shards=list(test["shards"])), "test.shards is .*expected a"),
        (lambda test: test.update(class_counts=[6] * 9), "test.class_counts is"),
        (lambda test: test["shards"].update({"../../x": "0" * 64}), "test.shards names '../../x'"),
        (
            lambda test: test["shards"].update({"/etc/passwd": "0" * 64}),
            "test.shards names '/etc/passwd'",
        ),
    ],
)
def test_meta_with_wrong_types_or_names_is_one_line(prepared_copy, change, message):
    meta = records.read_meta(prepared_copy)
    change(meta["splits"]["test"])
    (prepared_copy / "meta.json").write_text(json.dumps(files.seal(meta)))
    with pytest.raises(ValueError, match=f"meta.json: {message}.*dvc repro -f prepare"):
        records.load_split(prepared_copy, "test")


def _rewrite_with_shifted_labels(shard: Path, count: int | None = None) -> None:
    """The shard rewritten with valid records and CRCs, the first `count` labels (default:
    all) moved to the next digit."""
    images, labels = records.read_arrays([shard], (28, 28))
    labels[:count] = (labels[:count] + 1) % 10
    records.write_shards(images, labels, shard.parent, "scratch", len(labels))
    shard.parent.joinpath(records.shard_name("scratch", 0, 1)).replace(shard)


def test_a_shard_with_shifted_labels_is_refused_before_any_metric(prepared_copy):
    shard = prepared_copy / "test-00000-of-00001.tfrecord.gz"
    _rewrite_with_shifted_labels(shard)
    records.read_arrays([shard], (28, 28))  # a perfectly readable shard...
    with pytest.raises(ValueError, match=f"{shard}: its SHA-256 is not the one in meta.json"):
        records.load_split(prepared_copy, "test")  # ...that evaluate and train never use


def test_shifted_labels_with_a_matching_hash_still_fail_the_class_counts(prepared_copy):
    shard = prepared_copy / "test-00000-of-00001.tfrecord.gz"
    _rewrite_with_shifted_labels(shard, count=5)  # all shifted would keep these even counts
    meta = records.read_meta(prepared_copy)
    meta["splits"]["test"]["shards"][shard.name] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (prepared_copy / "meta.json").write_text(json.dumps(files.seal(meta)))
    with pytest.raises(ValueError, match="test labels' class counts differ from meta.json's"):
        records.load_split(prepared_copy, "test")


def test_evaluate_writes_no_metric_from_a_tampered_shard(prepared_copy, tmp_path, monkeypatch):
    from loopline.model import export_saved_model, tutorial_model
    from stages import evaluate

    export_saved_model(tutorial_model(), tmp_path / "model")  # untrained: enough to run
    _rewrite_with_shifted_labels(prepared_copy / "test-00000-of-00001.tfrecord.gz")
    metrics = tmp_path / "metrics"
    names = ("eval.json", "per_class.json", "confusion.csv", "mistakes.png")  # its argv order
    outputs = [metrics / name for name in names]
    arguments = [str(tmp_path / "model"), str(prepared_copy), *map(str, outputs)]
    monkeypatch.setattr(
        sys, "argv", ["evaluate", *arguments, "--params", str(REPO / "params.yaml")]
    )
    with pytest.raises(ValueError, match="SHA-256 is not the one in meta.json"):
        evaluate.main()
    assert not metrics.exists()


def test_a_symlink_leaving_the_data_folder_is_refused(prepared_copy, tmp_path):
    shard = prepared_copy / "validation-00000-of-00001.tfrecord.gz"
    elsewhere = tmp_path / "elsewhere.tfrecord.gz"
    shard.replace(elsewhere)
    shard.symlink_to(elsewhere)
    with pytest.raises(ValueError, match=f"{shard}: a link to .*, outside"):
        records.load_split(prepared_copy, "validation")


def test_a_symlink_into_a_dvc_cache_is_followed(prepared_copy, tmp_path):
    # cache.type: symlink links every file of data/prepared to <cache>/files/md5/xx/yyyy.
    shard = prepared_copy / "validation-00000-of-00001.tfrecord.gz"
    digest = hashlib.md5(shard.read_bytes()).hexdigest()
    cached = tmp_path / "cache/files/md5" / digest[:2] / digest[2:]
    cached.parent.mkdir(parents=True)
    shard.replace(cached)
    shard.symlink_to(cached)
    images, _ = records.load_split(prepared_copy, "validation")
    assert len(images) == 40


# -- prepare's inputs and a full disk ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"- mnist.npz\n", "expected a mapping of key: value"),
        (b"checksums: {mnist.npz: ", "malformed YAML"),
        (b"checksums: {mnist.npz: \xff}", "not UTF-8 text"),
        (b"checksums: {mnist.npz: 5}", "checksums: got .*, expected a mapping of file name"),
        (b"checksums: [mnist.npz]", "checksums: got .*, expected a mapping of file name"),
    ],
)
def test_bad_checksums_in_the_description_are_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "dataset.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        read_description(tmp_path)


def test_a_failed_write_names_the_output_and_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(self, *arguments, **keywords):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full_disk)
    target = tmp_path / "metrics" / "eval.json"
    with pytest.raises(files.WriteError) as caught:
        files.write_json(target, {"accuracy": 1.0})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(target.parent.iterdir()) == []


def test_a_tensorflow_write_error_becomes_one_naming_the_file(tmp_path):
    import tensorflow as tf

    target = tmp_path / "prepared"
    with pytest.raises(files.WriteError) as caught, files.atomic_output(target) as temporary:
        temporary.mkdir()
        shard = temporary / "train-00000-of-00001.tfrecord.gz"
        raise tf.errors.ResourceExhaustedError(None, None, f"{shard}; No space left on device")
    assert caught.value.filename == str(target / "train-00000-of-00001.tfrecord.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs, where the machine allows mounting one (root in a container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the injected ENOSPC tests still run")
    yield mount
    # Lazily: a TFRecordWriter that failed keeps its file open until the process ends.
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_prepare_on_a_full_disk_names_the_output_not_the_input(tiny_disk, tmp_path):
    # ~3 MB of uncompressed arrays on a 2 MB disk: refused before copying anything.
    raw = write_raw(tmp_path / "raw", synthetic_arrays(train=3000, test=600))
    with pytest.raises(files.WriteError) as caught:
        prepare(raw, tiny_disk / "p", PREPARE_PARAMS)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename.startswith(str(tiny_disk / "p"))
    assert str(raw) in caught.value.strerror  # whose arrays would not fit
    assert list(tiny_disk.iterdir()) == []


def test_a_write_error_is_one_line_at_the_stage_boundary(capsys):
    def main():
        raise files.WriteError(errno.ENOSPC, "No space left on device", "metrics/eval.json")

    with pytest.raises(SystemExit) as caught:
        files.run_stage(main)
    assert caught.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: metrics/eval.json: No space left on device; free some space on that file "
        "system, then re-run"
    ]


def test_shards_on_a_full_disk_name_the_shard(tiny_disk):
    # 2 MB of random (incompressible) images: more than the disk holds once compressed.
    images = np.random.default_rng(0).integers(0, 256, (3000, 28, 28), dtype=np.uint8)
    labels = np.zeros(3000, np.uint8)
    with pytest.raises(files.WriteError) as caught, files.atomic_output(tiny_disk / "p") as out:
        out.mkdir()
        records.write_shards(images, labels, out, "train", 1000)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename.startswith(str(tiny_disk / "p" / "train-0000"))
    assert list(tiny_disk.iterdir()) == []


# -- signals and leftovers ---------------------------------------------------------------

# A stage process that needs no TensorFlow (the `loopline` package may import it): quick.
STAGE = """
import sys, time
from pathlib import Path
sys.path.insert(0, "loopline")
from files import atomic_output, run_stage

def main():
    with atomic_output(Path(sys.argv[1])) as temporary:
        temporary.write_text("half")
        print("writing", flush=True)
        time.sleep(60)

run_stage(main)
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_a_stage_in_one_line_and_leaves_nothing(tmp_path, signum, code):
    target = tmp_path / "metrics" / "eval.json"
    process = subprocess.Popen(
        [sys.executable, "-c", STAGE, str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A background job of a non-interactive shell starts with SIGINT ignored, and so
        # would Python: restore it, as a terminal's Ctrl-C finds it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout.readline() == "writing\n"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == code
    assert stderr.splitlines() == [
        f"-c: interrupted by {signal.Signals(signum).name}; no output was half-written; "
        "run `dvc repro` to run the stage again"
    ]
    assert list(target.parent.iterdir()) == []


def test_tensorflows_start_up_notices_are_dropped_and_its_other_lines_kept(tmp_path):
    # A stand-in `tensorflow` that writes, while it is imported, TensorFlow 2.21's start-up
    # notices (printed without TF_CPP_MIN_LOG_LEVEL, and by some builds even with it), then a
    # line that must reach the terminal, as a fatal error from its native code would.
    notices = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796514948.977846    6366 cpu_feature_guard.cc:227] This TensorFlow "
        "binary is optimized to use available CPU instructions in performance-critical "
        "operations.",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.",
    ]
    fatal = "F0000 00:00:1796514949.000000    6366 stand-in.cc:1] Check failed: a fatal error"
    lines = [*notices, fatal]
    (tmp_path / "tensorflow.py").write_text(
        f"import os\nfor line in {lines!r}:\n    os.write(2, (line + '\\n').encode())\n"
    )
    code = (
        "import os, loopline\n"
        "loopline.import_tensorflow_quietly()\n"
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == fatal + "\n"
    assert result.stdout == "2\n"  # TensorFlow's own info and warning lines off, not errors


def test_a_killed_stages_leftovers_are_ignored_by_git_and_dvc():
    leftovers = ["metrics/.mistakes.png.tmp-12345", "data/.prepared.tmp-99/meta.json"]
    result = subprocess.run(
        ["git", "check-ignore", *leftovers], cwd=REPO, capture_output=True, text=True
    )
    assert result.stdout.split() == leftovers
    assert ".*.tmp-*" in (REPO / ".dvcignore").read_text().splitlines()


def test_ctrl_c_during_a_real_prepare_is_one_line_and_leaves_nothing(tmp_path):
    raw = write_raw(tmp_path / "raw", synthetic_arrays(train=3000, test=600))
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.prepare", str(raw), str(tmp_path / "p")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".p.tmp-*")):  # TensorFlow loaded, prepare under way
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    # Nothing else on stderr: no traceback, and none of the start-up notices of TensorFlow,
    # which the stage imports first (loopline.import_tensorflow_quietly).
    assert stderr.splitlines() == [
        "prepare: interrupted by SIGINT; no output was half-written; "
        "run `dvc repro` to run the stage again"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw"]
