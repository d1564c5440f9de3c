"""docs/cli.md is generated from --help and must not go stale."""

from pathlib import Path

from searchengine.docgen import render

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == render(), "docs/cli.md is stale: run `make docs`"


def test_cli_reference_covers_every_command():
    from searchengine.cli import cli

    text = render()
    for name in cli.commands:
        assert f"`searchengine {name}`" in text
