"""What the CLI tells a person: progress on a terminal, the project's own log under -v, warnings
where a command would otherwise succeed silently, and help that names real commands and defaults."""

from __future__ import annotations

import re
from pathlib import Path

import click

from searchengine.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def command_names(group: click.Group = cli, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        names.add(f"{prefix}{name}")
        if isinstance(command, click.Group):
            names |= command_names(command, prefix=f"{prefix}{name} ")
    return names


def test_messages_name_only_commands_that_exist():
    """Every `searchengine CMD` a message or docstring tells a user to run is a real command."""
    known = command_names()
    named = {}
    for path in sorted((ROOT / "searchengine").rglob("*.py")):
        pattern = r"`searchengine ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?"
        for match in re.finditer(pattern, path.read_text()):
            first, second = match.groups()
            name = f"{first} {second}" if f"{first} {second}" in known else first
            named.setdefault(name, path.relative_to(ROOT))
    unknown = {name: str(path) for name, path in named.items() if name not in known}
    assert not unknown, f"messages name commands that do not exist: {unknown}"
