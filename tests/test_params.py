import re
import sys

import pytest

from loopline.params import SPECS, load_params
from stages import prepare as prepare_stage
from tests.conftest import DEFAULT_PARAMS, REPO, write_params

ALL_KEYS = tuple(SPECS)


def test_repository_params_are_valid_and_complete():
    params = load_params(ALL_KEYS, REPO / "params.yaml")
    assert set(params) == set(SPECS) == set(DEFAULT_PARAMS)


def test_learning_rate_written_by_dvc_as_string_is_a_float(tmp_path):
    # `dvc exp run -S learning_rate=1e-5` writes 1e-05, which PyYAML reads as a string.
    path = tmp_path / "params.yaml"
    path.write_text(
        write_params(path).read_text().replace("learning_rate: 0.001", "learning_rate: 1e-05")
    )
    assert load_params(("learning_rate",), path) == {"learning_rate": 1e-05}


def test_integer_learning_rate_is_a_float(tmp_path):
    params = load_params(("learning_rate",), write_params(tmp_path / "p.yaml", learning_rate=1))
    assert params["learning_rate"] == 1.0 and isinstance(params["learning_rate"], float)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", -1, "epochs: got -1, expected an integer from 1 to 10,000"),
        ("epochs", 0, "epochs: got 0, expected an integer from 1 to 10,000"),
        ("epochs", 2.5, "epochs: got 2.5"),
        ("epochs", True, "epochs: got True"),
        ("batch_size", 0, "batch_size: got 0"),
        ("batch_size", "32", "batch_size: got '32'"),
        ("learning_rate", 0, "learning_rate: got 0.0, expected a number > 0"),
        ("learning_rate", "fast", "learning_rate: got 'fast'"),
        ("jit_compile", "yes please", "jit_compile: got 'yes please', expected true or false"),
        ("model", "resnet", "model: got 'resnet', expected one of tutorial, convnet"),
        ("max_train_examples", 0, "max_train_examples: got 0"),
        ("seed", -3, "seed: got -3"),
        ("validation_size", 1.5, "validation_size: got 1.5, expected a count"),
        ("validation_size", 0, "validation_size: got 0, expected a count"),
        ("validation_size", "ten", "validation_size: got 'ten', expected a count"),
        ("dataset", "../mnist", "dataset: got '../mnist', expected the name of a folder"),
        ("dataset", ".hidden", "dataset: got '.hidden', expected the name of a folder"),
        ("dataset", 7, "dataset: got 7, expected the name of a folder"),
        ("precision", "float16", "precision: got 'float16', expected one of float32, mixed_bf"),
        ("label_smoothing", 1, "label_smoothing: got 1.0, expected a number from 0 to below 1"),
        ("label_smoothing", -0.1, "label_smoothing: got -0.1"),
        ("adam_beta_2", 1.0, "adam_beta_2: got 1.0, expected a number between 0 and 1"),
    ],
)
def test_bad_values_name_the_key(tmp_path, key, value, message):
    path = write_params(tmp_path / "params.yaml", **{key: value})
    with pytest.raises(ValueError, match="params.yaml: " + message.replace(".", r"\.")):
        load_params(ALL_KEYS, path)


def test_null_is_allowed_only_where_documented(tmp_path):
    path = write_params(tmp_path / "params.yaml", max_train_examples=None)
    assert load_params(("max_train_examples",), path) == {"max_train_examples": None}
    for value in (None, 0.1, 5000):
        path = write_params(tmp_path / "params.yaml", validation_size=value)
        assert load_params(("validation_size",), path) == {"validation_size": value}
    with pytest.raises(ValueError, match="epochs: got None"):
        load_params(("epochs",), write_params(tmp_path / "params.yaml", epochs=None))


def test_missing_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\n")
    with pytest.raises(ValueError, match="missing key 'epochs'"):
        load_params(("seed", "epochs"), path)


def test_unknown_key_is_refused(tmp_path):
    path = write_params(tmp_path / "params.yaml", epoch=3)
    with pytest.raises(ValueError, match="unknown key 'epoch'"):
        load_params(("epochs",), path)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nepochs: [5\n")
    with pytest.raises(ValueError, match=r"params.yaml: malformed YAML at line \d"):
        load_params(("seed",), path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such file"):
        load_params(("seed",), tmp_path / "nope.yaml")


def test_a_stage_refuses_a_bad_param_before_writing(tmp_path, monkeypatch):
    # The command line turns the error into one `error:` line and exit code 1
    # (loopline.files.run_stage; tests/test_faults.py runs a real stage to see its stderr).
    params = write_params(tmp_path / "params.yaml", validation_size=-5)
    out = tmp_path / "prepared"
    raw = [str(REPO / "data/raw/mnist")]
    monkeypatch.setattr(sys, "argv", ["prepare", *raw, str(out), "--params", str(params)])
    expected = "validation_size: got -5, expected a count up to 1,000,000,000, a fraction or null"
    with pytest.raises(ValueError, match=f"^{re.escape(f'{params}: {expected}')}$"):
        prepare_stage.main()
    assert not out.exists()
