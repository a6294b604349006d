"""Load and validate params.yaml: one flat mapping of plain, typed values.

Every stage asks for exactly the keys it reads (its `PARAMS` tuple, which dvc.yaml lists
too) and gets them back checked, or a one-line ValueError that names the key, the value
and what was expected.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from loopline.files import read_file

# The names each choice param accepts, listed once, here: pure Python, so that params.yaml
# is checked without importing TensorFlow. The code that dispatches on a name builds its
# table with dispatch_table, which refuses a table whose names differ from these.
MODELS = ("tutorial", "convnet", "fast")
# The models with a MaxPooling2D layer (tests/test_train.py checks this against the models).
MAX_POOLING_MODELS = ("convnet", "fast")
STRATEGIES = ("none", "mirrored", "multi_worker")
SCHEDULES = ("constant", "cosine", "onecycle")
QUANTIZATIONS = ("float", "dynamic_range", "int8")
# Keras dtype policies, by their own names (loopline/model.py build_model sets them).
PRECISIONS = ("float32", "mixed_bfloat16")
CHOICES = {
    "model": MODELS,
    "learning_rate_schedule": SCHEDULES,
    "distribute": STRATEGIES,
    "quantization": QUANTIZATIONS,
}

T = TypeVar("T")


def dispatch_table(key: str, **entries: T) -> dict[str, T]:
    """`entries` by name, checked to be exactly the choices of param `key`, in order."""
    if tuple(entries) != CHOICES[key]:
        raise RuntimeError(f"{key}: params.py lists {CHOICES[key]}, the code {tuple(entries)}")
    return entries


@dataclass(frozen=True)
class Spec:
    kind: type | tuple[type, ...]
    check: Callable[[Any], bool]
    expected: str
    optional: bool = False  # whether null is allowed


def _between(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: low <= value <= high


def _always(value: Any) -> bool:
    return True


def _count(high: int) -> Spec:
    return Spec(int, _between(1, high), f"an integer from 1 to {high:,}")


# Bounds: far above any sensible value for MNIST-sized data on one machine, low enough that
# a slip (an extra zero, 1e23) is refused here rather than as an overflow deep inside
# TensorFlow, or a run that never ends. Raise them here if a real data set needs more.
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536  # 2**16 images: 51 MB of uint8 pixels, far more as float activations
MAX_EXAMPLES = 1_000_000_000
MAX_EXAMPLES_PER_SHARD = 1_000_000  # prepare holds one shard's images per core: 784 MB
MAX_IN_MEMORY_MB = 10_000_000  # 10 TB


# A data set's folder name under data/raw: letters, digits, dots, dashes and underscores,
# not starting with a dot (a hidden folder), so it is one path component on every system.
DATASET_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def _size_or_fraction(value: Any) -> bool:
    """A count of at least 1, or a fraction strictly between 0 and 1."""
    if isinstance(value, float):
        return 0 < value < 1
    return 1 <= value <= MAX_EXAMPLES


SPECS: dict[str, Spec] = {
    # check_data, prepare, train, evaluate and export (their paths: dvc.yaml's ${dataset})
    "dataset": Spec(
        str,
        lambda value: DATASET_NAME.fullmatch(value) is not None,
        "the name of a folder in data/raw (letters, digits, '.', '-', '_')",
    ),
    # prepare
    # NumPy's legacy seeding (keras.utils.set_random_seed) takes seeds below 2**32.
    "seed": Spec(int, _between(0, 2**32 - 1), "an integer from 0 to 4,294,967,295 (2**32 - 1)"),
    "validation_size": Spec(
        (int, float),
        _size_or_fraction,
        f"a count up to {MAX_EXAMPLES:,}, a fraction or null",
        True,
    ),
    "max_train_examples": Spec(
        int, _between(1, MAX_EXAMPLES), f"an integer from 1 to {MAX_EXAMPLES:,}, or null", True
    ),
    "examples_per_shard": _count(MAX_EXAMPLES_PER_SHARD),
    # train
    "model": Spec(str, lambda value: value in MODELS, f"one of {', '.join(MODELS)}"),
    "epochs": _count(MAX_EPOCHS),
    "batch_size": _count(MAX_BATCH),
    "learning_rate": Spec(float, lambda value: 0 < value < math.inf, "a number > 0"),
    "learning_rate_schedule": Spec(
        str, lambda value: value in SCHEDULES, f"one of {', '.join(SCHEDULES)}"
    ),
    "adam_beta_2": Spec(float, lambda value: 0 < value < 1, "a number between 0 and 1"),
    "label_smoothing": Spec(float, lambda value: 0 <= value < 1, "a number from 0 to below 1"),
    "precision": Spec(str, lambda value: value in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "jit_compile": Spec(bool, _always, "true or false"),
    "deterministic": Spec(bool, _always, "true or false"),
    # The steps of one execution are compiled into one program: compile time grows with it.
    "steps_per_execution": _count(64),
    "distribute": Spec(str, lambda value: value in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
    # 0 streams every training split.
    "max_in_memory_mb": Spec(
        int, _between(0, MAX_IN_MEMORY_MB), f"an integer from 0 to {MAX_IN_MEMORY_MB:,}"
    ),
    # train, evaluate and export
    "eval_batch_size": _count(MAX_BATCH),
    # export
    "quantization": Spec(
        str, lambda value: value in QUANTIZATIONS, f"one of {', '.join(QUANTIZATIONS)}"
    ),
}


def _shown(value: Any) -> str:
    """`value` as the error message shows it: its repr, cut short if long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(key: str, value: Any, spec: Spec) -> Any:
    """Return `value` as `spec.kind`, or raise ValueError naming the key."""
    if value is None and spec.optional:
        return None
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    if float in kinds and isinstance(value, str):
        # `dvc exp run -S learning_rate=1e-5` writes 1e-05, which YAML 1.1 reads as a string.
        with contextlib.suppress(ValueError):
            value = float(value)
    if kinds == (float,) and isinstance(value, int) and not isinstance(value, bool):
        # An integer too large for a float (10**400) is refused as out of range, below.
        with contextlib.suppress(OverflowError):
            value = float(value)
    # bool is a subclass of int: `epochs: true` must not pass as 1.
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        raise ValueError(f"{key}: got {_shown(value)}, expected {spec.expected}")
    if not spec.check(value):
        raise ValueError(f"{key}: got {_shown(value)}, expected {spec.expected}")
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice (it would keep the last silently;
    DVC refuses such a file too)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)  # YAML merge keys (<<) first: they may override
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # unhashable: reported by the base class
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        problem=f"key {_shown(key)} given twice (lines {seen[key]} and {line})",
                        problem_mark=key_node.start_mark,
                    )
                seen[key] = line
        return super().construct_mapping(node, deep)


def load_mapping(path: Path, fix: str) -> dict[Any, Any]:
    """The YAML mapping in `path`, with no key given twice; `fix` ends the message when the
    file is missing. Values are not checked."""
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"{path}: no such file; {fix}")
    data = read_file(path, fix)  # a folder, a link that leads nowhere, unreadable: one line
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from None
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except RecursionError:
        raise ValueError(f"{path}: malformed YAML: nested too deep") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ValueError(f"{path}: malformed YAML{where}: {' '.join(problem.split())}") from None
    if not isinstance(document, dict):
        got = "an empty file" if document is None else type(document).__name__
        raise ValueError(f"{path}: expected a mapping of key: value, got {got}")
    return document


def read_document(path: str | Path = "params.yaml") -> dict[str, Any]:
    """The mapping in `path`, with no unknown or duplicate key; values not yet checked."""
    path = Path(path)
    document = load_mapping(path, "copy params.yaml from the repository")
    unknown = sorted((key for key in document if key not in SPECS), key=str)
    if unknown:
        raise ValueError(
            f"{path}: unknown key {_shown(unknown[0])}; known keys are {', '.join(SPECS)}"
        )
    return document


def check_params(document: dict[str, Any], keys: tuple[str, ...], path: str | Path) -> dict:
    """The values of `keys` in `document` (read from `path`), checked and typed."""
    params = {}
    for key in keys:
        if key not in document:
            raise ValueError(f"{path}: missing key {key!r} ({SPECS[key].expected})")
        try:
            params[key] = _coerce(key, document[key], SPECS[key])
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    return params


def load_params(keys: tuple[str, ...], path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read `path` and return the validated values of `keys`."""
    return check_params(read_document(path), keys, path)


def check_train_params(params: dict[str, Any], train_examples: int, replicas: int) -> None:
    """Checks across train's keys and the data: the model compiles with these settings, one
    group of full batches fits in an epoch, and the global batch splits evenly between the
    replicas of `distribute`."""
    # TF 2.21 has no deterministic XLA kernel for MaxPooling2D's gradient, on CPU too: the
    # first step fails ("GPU MaxPool gradient ops do not yet have a deterministic XLA
    # implementation", UNIMPLEMENTED). Refused here, before DVC deletes any outputs.
    model = params["model"]
    if model in MAX_POOLING_MODELS and params["jit_compile"] and params["deterministic"]:
        raise ValueError(
            f"params.yaml: model: {model} with jit_compile: true and deterministic: true cannot "
            f"compile (XLA has no deterministic max-pooling gradient); set jit_compile: false "
            f"(`-S jit_compile=false`)"
        )
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
