"""The docs against the repository: generated blocks as `make docs` writes them."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("generate", REPO / "docs/generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


@pytest.mark.parametrize("page", generate.pages(), ids=lambda page: page.name)
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
