"""The docs against the repository: generated blocks as `make docs` writes them."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("generate", REPO / "docs/generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


@pytest.mark.parametrize(
    "page", generate.pages(), ids=lambda page: page.relative_to(REPO).as_posix()
)
def test_every_generated_block_is_what_make_docs_writes(page) -> None:
    text = page.read_text()
    assert generate.render(text, page.name) == text, f"{page.name}: run `make docs`"


def test_a_block_is_rewritten_and_the_text_around_it_kept() -> None:
    page = "intro\n<!-- generated: first_classes -->\nstale\n<!-- end generated -->\nafter\n"
    rendered = generate.render(page)
    assert rendered.startswith("intro\n<!-- generated: first_classes -->\nFor the committed")
    assert rendered.endswith("(`metrics/confusion.csv`).\n<!-- end generated -->\nafter\n")
    assert generate.render(rendered) == rendered


def test_a_marker_that_names_no_generator_or_has_no_end_is_refused() -> None:
    with pytest.raises(ValueError, match="README.md: no generator named 'nonesuch'"):
        generate.render("<!-- generated: nonesuch -->\n<!-- end generated -->\n", "README.md")
    with pytest.raises(ValueError, match="without its end marker"):
        generate.render("<!-- generated: params -->\nno end\n")


def test_every_generator_writes_something() -> None:
    for name, function in generate.GENERATORS.items():
        assert function().strip(), name


# What the docs name, checked against the repository ----------------------------------------

PAGES = {page.relative_to(REPO).as_posix(): page.read_text() for page in generate.pages()}
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Paths that commands create outside the pipeline's outputs: each is named in the docs
# with the command that makes it.
CREATED = (".venv/", "dvc_plots/", ".checkpoints/", ".dvc/config.local", "mnist-v1.0.0")


def prose(text: str) -> str:
    return FENCE.sub("", text)


def pipeline_outputs() -> list[str]:
    """The stages' outputs, `${key}` filled in from params.yaml as `dvc repro` does."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    paths = [path for stage in stages.values() for path in generate.output_paths(stage)]
    return [re.sub(r"\$\{(\w+)\}", lambda key: str(params[key[1]]), path) for path in paths]


def path_exists(path: str) -> bool:
    """In the repository, or written by a stage of dvc.yaml (or under one of its outputs)."""
    path = path.rstrip("/")
    if (REPO / path).exists() or path.startswith(CREATED):
        return True
    return any(path == out or path.startswith(f"{out}/") for out in pipeline_outputs())


def named_paths(text: str) -> set[str]:
    """Backquoted paths in the prose (a slash, no placeholder or glob), and link targets."""
    paths = set()
    for code in INLINE_CODE.findall(prose(text)):
        if re.fullmatch(r"\.?[\w.-]+(/[\w.-]+)+/?", code) and "://" not in code:
            paths.add(code)
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            paths.add(target.split("#")[0])
    return paths


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page)
def test_every_file_the_docs_name_exists(page) -> None:
    base = (REPO / page).parent
    for path in named_paths(PAGES[page]):
        relative_to_page = (base / path).resolve()
        assert path_exists(path) or relative_to_page.exists(), f"{page}: {path}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page)
def test_every_link_to_a_section_finds_its_heading(page) -> None:
    for target in LINK.findall(PAGES[page]):
        if "#" not in target or re.match(r"[a-z]+:", target):
            continue
        file, anchor = target.split("#")
        linked = (REPO / page).parent / file if file else REPO / page
        headings = re.findall(r"^#+ (.+)$", prose(linked.read_text()), re.MULTILINE)
        assert anchor in {github_anchor(heading) for heading in headings}, f"{page}: {target}"


def test_every_make_target_param_and_module_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    params = set(yaml.safe_load((REPO / "params.yaml").read_text()))
    for page, text in PAGES.items():
        # The code only, one span or line apart from the next; an inline command may wrap.
        code = [*FENCE.findall(text), *INLINE_CODE.findall(" ".join(prose(text).split()))]
        text = "\n".join(code)
        for target in re.findall(r"\bmake (?:[A-Z]+=\S+ )*([a-z][\w-]*)", text):
            assert target in targets, f"{page}: make {target}"
        for key in set(re.findall(r"-S '?(\w+)=", text)) - {"key"}:  # `-S key=value`
            assert key in params, f"{page}: -S {key}"
        for module in re.findall(r"python -m ((?:stages|loopline|benchmarks)\.\w+)", text):
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{page}: {module}"
    documented = re.findall(r"^- \*\*`(\w+)`\*\*", PAGES["docs/pipeline.md"], re.MULTILINE)
    documented += re.findall(r"\*\*`(\w+)`\*\*, \*\*`(\w+)`\*\*", PAGES["docs/pipeline.md"])
    named = {key for entry in documented for key in ([entry] if isinstance(entry, str) else entry)}
    assert named == params, "docs/pipeline.md describes each param once"


def test_every_function_the_docs_name_is_in_the_code() -> None:
    """A snake_case name in backquotes is a word of the code, params or configuration.

    The research log is left out: it records what the code was when each entry was written.
    """
    sources = [*REPO.glob("*/*.py"), *REPO.glob("*.yaml"), REPO / "Makefile", REPO / ".dvc/config"]
    words = set(re.findall(r"\w+", " ".join(path.read_text() for path in sources)))
    for page, text in PAGES.items():
        if page == "docs/research-log.md":
            continue
        for code in INLINE_CODE.findall(prose(text)):
            for name in re.findall(r"(?<![\w./-])([a-z]+(?:_[a-z0-9]+)+)\b", code):
                assert name in words, f"{page}: `{code}` names {name}, which the code does not"


def test_readme_is_read_in_five_minutes() -> None:
    """At most 200 lines: reference material belongs to docs/*.md, linked from README."""
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md: {lines} lines; move reference material to docs/"
