"""The locks agree with what they are made from, on every platform, without the network.

`make check-lock` asks the package index whether the locks install on each platform; these
checks need no index: the .in files and the locks say the same thing, each platform gets
exactly one TensorFlow, and the test tools stay out of what `make repro` installs.
"""

import re

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

# The environments of `make check-lock`'s platforms (and Windows), as markers see them.
PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "linux-aarch64": {"sys_platform": "linux", "platform_machine": "aarch64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_machine": "arm64"},
    "windows-amd64": {"sys_platform": "win32", "platform_machine": "AMD64"},
}
TENSORFLOW = {
    "linux-x86_64": "tensorflow-cpu",
    "linux-aarch64": "tensorflow",
    "macos-arm64": "tensorflow",
    "windows-amd64": "tensorflow-cpu",
}
DEV_TOOLS = {"pytest", "ruff", "hypothesis", "pre-commit", "tf2onnx", "onnxruntime", "uv"}


def environment(platform: str) -> dict[str, str]:
    return {
        "python_version": "3.11",
        "python_full_version": "3.11.7",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "nt" if platform.startswith("windows") else "posix",
        "platform_system": {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}[
            PLATFORMS[platform]["sys_platform"]
        ],
        **PLATFORMS[platform],
    }


def requirements_in(name: str) -> list[Requirement]:
    """The requirements of a .in file, following its `-r` includes."""
    found = []
    for line in (REPO / name).read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line.startswith("-r "):
            found += requirements_in(line.removeprefix("-r ").strip())
        elif line and not line.startswith("#"):
            found.append(Requirement(line))
    return found


def lock(name: str) -> dict[str, list[tuple[str, Marker | None]]]:
    """Each package of a lock file -> its (version, marker) entries."""
    pins: dict[str, list[tuple[str, Marker | None]]] = {}
    pattern = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
    for line in (REPO / name).read_text().splitlines():
        match = pattern.match(line)
        if match:
            package, version, marker = match.groups()
            entry = (version, Marker(marker) if marker else None)
            pins.setdefault(canonicalize_name(package), []).append(entry)
    return pins


def installed(pins: dict, platform: str) -> dict[str, str]:
    """What a lock installs on `platform`: package -> version."""
    chosen = {}
    for package, entries in pins.items():
        versions = [v for v, m in entries if m is None or m.evaluate(environment(platform))]
        assert len(versions) <= 1, f"{package}: several versions on {platform}: {versions}"
        if versions:
            chosen[package] = versions[0]
    return chosen


@pytest.mark.parametrize(
    "source, locked",
    [("requirements.in", "requirements.txt"), ("requirements-dev.in", "requirements-dev.txt")],
)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_lock_holds_what_the_in_file_asks_for(source, locked, platform):
    packages = installed(lock(locked), platform)
    for requirement in requirements_in(source):
        name = canonicalize_name(requirement.name)
        wanted = requirement.marker is None or requirement.marker.evaluate(environment(platform))
        assert (name in packages) == wanted, f"{name} on {platform}: run `make lock`"
        if wanted:
            assert requirement.specifier.contains(packages[name]), (
                f"{locked} pins {name} {packages[name]}, {source} asks {requirement.specifier}:"
                " run `make lock`"
            )


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_gets_one_tensorflow_and_the_same_versions_in_both_locks(platform):
    runtime = installed(lock("requirements.txt"), platform)
    development = installed(lock("requirements-dev.txt"), platform)
    tensorflows = {name for name in runtime if name in ("tensorflow", "tensorflow-cpu")}
    assert tensorflows == {TENSORFLOW[platform]}
    assert runtime["tensorflow" if "tensorflow" in runtime else "tensorflow-cpu"] == "2.21.0"
    assert {name: development[name] for name in runtime} == runtime
    # As the project was tested: NumPy, protobuf and Keras as pip resolved them first.
    assert (runtime["numpy"], runtime["protobuf"], runtime["keras"]) == (
        "2.4.6",
        "7.36.2",
        "3.15.1",
    )


def test_make_repro_installs_no_test_tools():
    assert not DEV_TOOLS & set(lock("requirements.txt"))
    assert set(lock("requirements-dev.txt")) >= DEV_TOOLS
