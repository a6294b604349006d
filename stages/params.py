"""Load and validate params.yaml: one flat mapping of plain, typed values.

Every stage asks for exactly the keys it reads (its `PARAMS` tuple, which dvc.yaml lists
too) and gets them back checked, or a one-line ValueError that names the key, the value
and what was expected.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

# The names each choice param accepts, listed once, here: pure Python, so that params.yaml
# is checked without importing TensorFlow. The code that dispatches on a name builds its
# table with dispatch_table, which refuses a table whose names differ from these.
MODELS = ("tutorial", "convnet")
STRATEGIES = ("none", "mirrored", "multi_worker")
SCHEDULES = ("constant", "cosine")
CHOICES = {"model": MODELS, "learning_rate_schedule": SCHEDULES, "distribute": STRATEGIES}

T = TypeVar("T")


def dispatch_table(key: str, **entries: T) -> dict[str, T]:
    """`entries` by name, checked to be exactly the choices of param `key`, in order."""
    if tuple(entries) != CHOICES[key]:
        raise RuntimeError(f"{key}: params.py lists {CHOICES[key]}, the code {tuple(entries)}")
    return entries


@dataclass(frozen=True)
class Spec:
    kind: type
    check: Callable[[Any], bool]
    expected: str
    optional: bool = False  # whether null is allowed


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def _always(value: Any) -> bool:
    return True


SPECS: dict[str, Spec] = {
    # prepare
    "seed": Spec(int, _non_negative, "an integer >= 0"),
    "validation_size": Spec(int, _positive, "an integer > 0"),
    "max_train_examples": Spec(int, _positive, "an integer > 0, or null for all", True),
    "examples_per_shard": Spec(int, _positive, "an integer > 0"),
    # train
    "model": Spec(str, lambda value: value in MODELS, f"one of {', '.join(MODELS)}"),
    "epochs": Spec(int, _positive, "an integer > 0"),
    "batch_size": Spec(int, _positive, "an integer > 0"),
    "learning_rate": Spec(float, lambda value: 0 < value < math.inf, "a number > 0"),
    "learning_rate_schedule": Spec(
        str, lambda value: value in SCHEDULES, f"one of {', '.join(SCHEDULES)}"
    ),
    "jit_compile": Spec(bool, _always, "true or false"),
    "deterministic": Spec(bool, _always, "true or false"),
    "steps_per_execution": Spec(int, _positive, "an integer > 0"),
    "distribute": Spec(str, lambda value: value in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
    # train and evaluate
    "eval_batch_size": Spec(int, _positive, "an integer > 0"),
}


def _coerce(key: str, value: Any, spec: Spec) -> Any:
    """Return `value` as `spec.kind`, or raise ValueError naming the key."""
    if value is None and spec.optional:
        return None
    if spec.kind is float and isinstance(value, str):
        # `dvc exp run -S learning_rate=1e-5` writes 1e-05, which YAML 1.1 reads as a string.
        with contextlib.suppress(ValueError):
            value = float(value)
    if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    # bool is a subclass of int: `epochs: true` must not pass as 1.
    if not isinstance(value, spec.kind) or (spec.kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{key}: got {value!r}, expected {spec.expected}")
    if not spec.check(value):
        raise ValueError(f"{key}: got {value!r}, expected {spec.expected}")
    return value


def load_params(keys: tuple[str, ...], path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read `path` and return the validated values of `keys`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; copy params.yaml from the repository")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ValueError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping of key: value, got {type(document).__name__}")
    unknown = sorted(set(document) - set(SPECS), key=str)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r}; known keys are {', '.join(SPECS)}")
    params = {}
    for key in keys:
        if key not in document:
            raise ValueError(f"{path}: missing key {key!r} ({SPECS[key].expected})")
        try:
            params[key] = _coerce(key, document[key], SPECS[key])
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return params


def check_train_params(params: dict[str, Any], train_examples: int, replicas: int) -> None:
    """Checks across train's keys and the data: one group of full batches fits in an epoch,
    and the global batch splits evenly between the replicas of `distribute`."""
    batch_size, group = params["batch_size"], params["steps_per_execution"]
    if batch_size * group > train_examples:
        raise ValueError(
            f"params.yaml: batch_size: got {batch_size}, expected at most the {train_examples} "
            f"training examples divided by steps_per_execution ({group}): an epoch is made of "
            f"whole groups of steps_per_execution full batches"
        )
    if batch_size % replicas:
        raise ValueError(
            f"params.yaml: batch_size: got {batch_size}, expected a multiple of the "
            f"{replicas} replicas of distribute: {params['distribute']}"
        )
