"""Generate docs/cli.md from the commands' own `--help` (a test keeps the file current).

python -m searchengine.docgen > docs/cli.md
"""

from __future__ import annotations

import click
from click.testing import CliRunner

HEADER = """# CLI reference

Generated from `--help` by `make docs` (`python -m searchengine.docgen > docs/cli.md`);
do not edit by hand: `tests/test_docs.py` fails when this file is stale.
"""


def _walk(group: click.Group, prefix: list[str]):
    for name in sorted(group.commands):
        command = group.commands[name]
        yield [*prefix, name], command
        if isinstance(command, click.Group):
            yield from _walk(command, [*prefix, name])


def render() -> str:
    """The whole reference as Markdown: one section per command, its help in a code block."""
    from searchengine.cli import cli

    runner = CliRunner()
    parts = [HEADER]
    for words, _command in [([], cli), *_walk(cli, [])]:
        result = runner.invoke(
            cli, [*words, "--help"], prog_name="searchengine", terminal_width=100
        )
        title = " ".join(["searchengine", *words])
        parts.append(f"## `{title}`\n\n```\n{result.output.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
