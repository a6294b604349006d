"""dvc.yaml against the code: each stage lists exactly the params and sources it uses."""

import ast
import importlib

import pytest
import yaml

from tests.conftest import DEFAULT_PARAMS, REPO

PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = ("prepare", "train", "evaluate", "export")


def stage_imports(module_name: str, seen: set[str] | None = None) -> set[str]:
    """The `stages` modules `module_name` imports, directly or not (itself included)."""
    seen = set() if seen is None else seen
    seen.add(module_name)
    tree = ast.parse((REPO / (module_name.replace(".", "/") + ".py")).read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stages"):
            names = (
                [node.module]
                if node.module != "stages"
                else [f"stages.{alias.name}" for alias in node.names]
            )
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("stages.")]
        for name in names:
            if name not in seen:
                stage_imports(name, seen)
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_match_what_the_code_reads(stage):
    module = importlib.import_module(f"stages.{stage}")
    assert PIPELINE["stages"][stage]["params"] == list(module.PARAMS)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_depends_on_exactly_its_source_files(stage):
    sources = {f"{name.replace('.', '/')}.py" for name in stage_imports(f"stages.{stage}")}
    sources.add("stages/__init__.py")
    deps = {dep for dep in PIPELINE["stages"][stage]["deps"] if dep.startswith("stages/")}
    assert deps == sources


def test_every_param_is_read_by_some_stage():
    read = {key for stage in STAGES for key in PIPELINE["stages"][stage]["params"]}
    assert read == set(DEFAULT_PARAMS)


def test_stage_commands_run_their_own_module():
    for stage in STAGES:
        assert PIPELINE["stages"][stage]["cmd"].startswith(f"python -m stages.{stage} ")


def test_no_stage_imports_another_stage():
    # Shared code lives in modules that are not stages (files, records, savedmodel, ...), so
    # a change to one stage's script never re-runs another stage.
    scripts = {f"stages.{name}" for name in (*STAGES, "predict")}
    for script in scripts:
        assert stage_imports(script) & scripts == {script}
