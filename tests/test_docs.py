"""README's CLI section and the click group agree; every command and option has help."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import nyxnb
from nyxnb.cli import cli

README = Path(nyxnb.__file__).resolve().parent.parent / "README.md"
GLOBAL_OPTIONS = {"--db", "--json", "--help", "--version"}


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[str, click.Command]:
    """Every command and subcommand by its path (``"tenant add"``), groups included."""
    out: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = (*prefix, name)
        out[" ".join(path)] = command
        if isinstance(command, click.Group):
            out |= walk(command, path)
    return out


COMMANDS = walk(cli)


def cli_section() -> str:
    text = README.read_text()
    match = re.search(r"^## CLI\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README.md has no '## CLI' section"
    return match.group(1)


def documented_usages() -> list[str]:
    """Every ``nyxnb ...`` code span of the CLI section."""
    return [s for s in re.findall(r"`([^`]+)`", cli_section()) if s.startswith("nyxnb ")]


def resolve(usage: str) -> tuple[str, click.Command]:
    """The registered command a documented usage names (longest matching path)."""
    words = usage.split()[1:]
    path: list[str] = []
    command: click.Command = cli
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    assert path, f"README documents `{usage}`, which is not a registered command"
    return " ".join(path), command


def test_the_cli_has_commands() -> None:
    assert {"init", "seed", "tenant add", "run", "show"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_is_in_the_readme(path: str) -> None:
    usages = documented_usages()
    assert any(u == f"nyxnb {path}" or u.startswith(f"nyxnb {path} ") for u in usages), (
        f"`nyxnb {path}` is missing from README.md's CLI section"
    )


def test_every_documented_usage_is_a_command_with_those_options() -> None:
    usages = documented_usages()
    assert usages
    for usage in usages:
        path, command = resolve(usage)
        known = {opt for p in command.params for opt in p.opts if opt.startswith("--")}
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", usage):
            assert option in known | GLOBAL_OPTIONS, f"`{usage}`: {path} has no {option}"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_help(path: str) -> None:
    command = COMMANDS[path]
    assert (command.help or "").strip(), f"`nyxnb {path}` has no help text"
    assert command.get_short_help_str().strip()
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"`nyxnb {path}` option {param.opts} has no help"


def test_every_leaf_command_takes_json() -> None:
    for path, command in COMMANDS.items():
        if not isinstance(command, click.Group):
            opts = {o for p in command.params for o in p.opts}
            assert "--json" in opts, f"`nyxnb {path}` has no --json"


def test_group_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert re.search(rf"^\s+{re.escape(name)}\s", result.output, flags=re.M), name


def test_the_readme_quotes_the_latest_per_item_overhead_of_bench() -> None:
    """The README quoted 191 us/item while bench/README.md's latest run measured 497."""
    bench = (README.parent / "bench" / "README.md").read_text(encoding="utf-8")
    measured = re.findall(r"([\d,]+) us/item at L = 0", bench)
    readme = README.read_text(encoding="utf-8")
    quoted = re.search(r"fan-out costs ([\d,]+) us of engine\s+overhead per item", readme)
    assert measured and quoted, "keep both sentences (or update this test with them)"
    assert quoted.group(1) == measured[-1]
