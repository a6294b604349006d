"""dvc.yaml against the code: each stage lists exactly the params and sources it uses."""

import ast
import importlib
import json
import re

import pytest
import yaml

from tests.conftest import DEFAULT_PARAMS, REPO, run_without_tensorflow

PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = ("check_data", "prepare", "train", "evaluate", "export")
# The two packages: the stages (entry points) and the library they share.
OURS = ("stages", "loopline")


def stage_imports(module_name: str, seen: set[str] | None = None) -> set[str]:
    """The project modules (`stages.*`, `loopline.*`) `module_name` imports, directly or
    not (itself included)."""
    seen = set() if seen is None else seen
    seen.add(module_name)
    tree = ast.parse((REPO / (module_name.replace(".", "/") + ".py")).read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
            names = (
                [node.module]
                if node.module not in OURS
                else [f"{node.module}.{alias.name}" for alias in node.names]
            )
        elif isinstance(node, ast.Import):
            names = [
                alias.name
                for alias in node.names
                if alias.name.split(".")[0] in OURS and alias.name not in OURS
            ]
        for name in names:
            if name not in seen:
                stage_imports(name, seen)
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_match_what_the_code_reads(stage):
    module = importlib.import_module(f"stages.{stage}")
    assert PIPELINE["stages"][stage].get("params", []) == list(module.PARAMS)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_depends_on_exactly_its_source_files(stage):
    sources = {f"{name.replace('.', '/')}.py" for name in stage_imports(f"stages.{stage}")}
    sources |= {"stages/__init__.py", "loopline/__init__.py"}  # run by every import
    deps = {dep for dep in PIPELINE["stages"][stage]["deps"] if dep.split("/")[0] in OURS}
    assert deps == sources


def templated(stage: str) -> set[str]:
    """The params.yaml keys that `stage`'s command interpolates (DVC's `${key}`): a changed
    value changes the command, which re-runs the stage."""
    return set(re.findall(r"\$\{(\w+)\}", PIPELINE["stages"][stage]["cmd"]))


def test_every_param_is_read_by_some_stage():
    read = {key for stage in STAGES for key in PIPELINE["stages"][stage].get("params", [])}
    read |= {key for stage in STAGES for key in templated(stage)}
    assert read == set(DEFAULT_PARAMS)


def test_the_data_set_picks_the_data_folder_and_names_the_model():
    stages = PIPELINE["stages"]
    for stage in ("check_data", "prepare"):
        assert templated(stage) == {"dataset"}
        assert "data/raw/${dataset}" in stages[stage]["deps"]
    assert stages["train"]["outs"][0] == "models/${dataset}"
    assert stages["export"]["outs"] == ["models/${dataset}.tflite"]
    # validate reads check_data's summary, not the data: a changed param does not make it
    # read every image again.
    assert "data/dataset.json" in stages["validate"]["deps"]
    assert stages["check_data"]["outs"] == ["data/dataset.json"]
    assert not [dep for dep in stages["validate"]["deps"] if dep.startswith("data/raw")]


def test_stage_commands_run_their_own_module():
    for stage in STAGES:
        assert PIPELINE["stages"][stage]["cmd"].startswith(f"python -m stages.{stage} ")


def test_validate_runs_first_and_each_stage_depends_on_its_own_checked_params():
    # validate checks params.yaml before DVC deletes any output; each stage depends on its
    # own file, so it re-runs only when its own values change.
    validate = PIPELINE["stages"]["validate"]
    with_params = [name for name in STAGES if PIPELINE["stages"][name].get("params")]
    assert "check_data" not in with_params  # it reads the data alone
    modules = [f"stages/{name}.py" for name in with_params]
    assert validate["cmd"].startswith("python -m stages.validate ")
    assert validate["cmd"].split()[-len(modules) :] == modules
    assert set(modules) <= set(validate["deps"])
    assert validate["params"] == [{"params.yaml": None}]  # every key
    for name in with_params:
        assert f"data/params/{name}.json" in PIPELINE["stages"][name]["deps"]


def test_validate_imports_no_tensorflow_and_writes_each_stages_values(tmp_path):
    from stages.check_data import check_data

    command = PIPELINE["stages"]["validate"]["cmd"].split()
    command[command.index("data/params")] = str(tmp_path / "checked")
    command[command.index("data/dataset.json")] = str(tmp_path / "dataset.json")
    check_data(REPO / "data/raw/mnist", tmp_path / "dataset.json")
    run_without_tensorflow(command[1:])
    for name in [stage for stage in STAGES if PIPELINE["stages"][stage].get("params")]:
        checked = json.loads((tmp_path / "checked" / f"{name}.json").read_text())
        assert list(checked) == list(importlib.import_module(f"stages.{name}").PARAMS)
        assert checked == {key: DEFAULT_PARAMS[key] for key in checked}


ENTRY_POINTS = (*STAGES, "validate", "predict")


def test_stages_holds_the_entry_points_only():
    assert {path.stem for path in (REPO / "stages").glob("[a-z]*.py")} == set(ENTRY_POINTS)


def test_no_stage_imports_another_stage():
    # Shared code lives in the library (loopline/), so a change to one stage's script never
    # re-runs another stage.
    scripts = {f"stages.{name}" for name in ENTRY_POINTS}
    for script in scripts:
        assert stage_imports(script) & scripts == {script}


def test_the_library_imports_no_stage():
    modules = [f"loopline.{path.stem}" for path in (REPO / "loopline").glob("[a-z]*.py")]
    for module in modules:
        imported = stage_imports(module)
        assert all(name.startswith("loopline.") for name in imported), (module, imported)
