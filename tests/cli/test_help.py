"""``--help`` of every command: flags shown as flags, nothing cut at 80 columns, and the shared options
(``--device``, ``--amp/--no-amp``, ``--quiet/-q``) spelled and explained the same everywhere."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from medfcn.cli.main import app

runner = CliRunner()


def _commands() -> Iterator[tuple[list[str], object]]:
    root = typer.main.get_command(app)
    yield [], root
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        yield [name], command
        for sub_name, sub in getattr(command, "commands", {}).items():
            yield [name, sub_name], sub


COMMANDS = {" ".join(path) or "medfcn": (path, command) for path, command in _commands()}
SHARED = {"device": ["--device"], "amp": ["--amp", "--no-amp"], "quiet": ["--quiet", "-q"]}


def _options(command: object) -> list:  # click Options of the command
    return [p for p in command.params if p.param_type_name == "option"]  # type: ignore[attr-defined]


def test_every_command_is_covered() -> None:
    for expected in ("medfcn", "train", "infer", "evaluate", "export", "demo", "info", "data synth", "data scan"):
        assert expected in COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_fits_80_columns_without_cutting_anything(name: str) -> None:
    path, command = COMMANDS[name]
    result = runner.invoke(app, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    assert "…" not in result.output and "<bool>" not in result.output and "╭" not in result.output
    words = set(result.output.replace(",", " ").replace("/", " ").split())
    for option in _options(command):
        for opt in [*option.opts, *option.secondary_opts]:
            assert opt in words, f"{name}: {opt} is not in its help in full"


def _option_heads(text: str) -> list[str]:
    """The first column of each option row: ``-q, --quiet``, ``--amp / --no-amp``, ``--seed <int>``."""
    return [
        re.split(r"\s{2,}", line.strip())[0]
        for line in text.splitlines()
        if re.match(r"^ {2}-", line)
    ]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flags_take_no_value_in_help(name: str) -> None:
    path, command = COMMANDS[name]
    heads = _option_heads(runner.invoke(app, [*path, "--help"], terminal_width=100).output)
    flags = [o for o in _options(command) if o.is_flag]
    for option in _options(command):
        (head,) = [h for h in heads if option.opts[0] in h.replace(",", " ").split()]
        if option.is_flag:
            assert "<" not in head, f"{name}: the flag {head!r} shows a value"
        else:
            assert "<" in head, f"{name}: the option {head!r} shows no value"
    if name == "infer":
        assert {o.opts[0] for o in flags} >= {"--tta", "--save-probabilities", "--quiet", "--amp"}


def test_help_uses_a_wide_terminal() -> None:
    narrow = runner.invoke(app, ["infer", "--help"], terminal_width=80).output
    wide = runner.invoke(app, ["infer", "--help"], terminal_width=200).output
    assert max(len(line) for line in wide.splitlines()) > 100
    assert len(wide.splitlines()) < len(narrow.splitlines())


def test_a_flag_given_a_value_is_a_usage_error() -> None:
    result = runner.invoke(app, ["infer", "--bundle", ".", "--input", ".", "--output", "/tmp/x", "--tta", "true"])
    assert result.exit_code == 2 and "true" in result.output


@pytest.mark.parametrize("dest", sorted(SHARED))
def test_shared_options_are_spelled_and_explained_once(dest: str) -> None:
    seen: dict[str, tuple[list[str], str]] = {}
    for name, (_, command) in COMMANDS.items():
        for option in _options(command):
            if option.name == dest:
                seen[name] = (sorted([*option.opts, *option.secondary_opts]), option.help.split(". ")[0])
    assert len(seen) >= {"device": 4, "amp": 3, "quiet": 6}[dest], seen
    assert {tuple(opts) for opts, _ in seen.values()} == {tuple(sorted(SHARED[dest]))}, seen
    assert len({first for _, first in seen.values()}) == 1, seen  # the same explanation (a note may follow)


def test_no_command_spells_progress_another_way() -> None:
    for name, (_, command) in COMMANDS.items():
        for option in _options(command):
            opts = [*option.opts, *option.secondary_opts]
            assert not {"--progress", "--no-progress", "--silent"} & set(opts), (name, opts)
            if "--quiet" in opts:
                assert "-q" in opts, name
