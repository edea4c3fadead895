"""``--help`` and the README agree, and both say enough.

Every subcommand has a description; every option has a help text, and one with a
default says it; no help shows raw reST markup. The README's Commands table has a row
for every subcommand, and that row names every option the subcommand takes, so that
the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from agent import cli

ROOT = Path(__file__).resolve().parent.parent
PASSTHROUGH = ("log", "team", "sessions", "report", "queue")
"Subcommands with a parser of their own (the main parser passes their arguments on)."


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def options(sp: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in sp._actions if a.option_strings and "-h" not in a.option_strings]


def help_text(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main(argv)  # argparse exits; the passthrough commands return instead
    return out.getvalue()


def commands_table() -> dict[str, str]:
    """The README's Commands table: ``peerdesk NAME`` -> its row."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        for name in re.findall(r"`peerdesk ([a-z]+)", line.split("|")[1] if "|" in line else ""):
            rows[name] = rows.get(name, "") + line
        if line.startswith("| `peerdesk` |"):
            rows[""] = line
    return rows


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_explains_itself(name: str) -> None:
    text = help_text([name, "--help"])
    assert "``" not in text, f"raw reST markup in peerdesk {name} --help"
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: peerdesk {name}"), text
    description = rest.split("\n\n", 1)[0]
    assert description and not description.startswith(("positional", "options")), (
        f"peerdesk {name} --help has no description"
    )


@pytest.mark.parametrize("name", sorted(set(subcommands()) - set(PASSTHROUGH)))
def test_every_option_has_help_and_says_its_default(name: str) -> None:
    for action in options(subcommands()[name]):
        flag = action.option_strings[-1]
        assert action.help, f"peerdesk {name} {flag} has no help"
        trivial = action.default in (None, False, [], "", argparse.SUPPRESS)
        if not trivial and not isinstance(action, argparse._StoreTrueAction):
            assert "default" in action.help.lower(), (
                f"peerdesk {name} {flag}: the help does not say the default ({action.default!r})"
            )


def test_the_readme_commands_table_matches_the_parser() -> None:
    rows = commands_table()
    assert "" in rows and "tray" in rows[""], "the README must say what plain peerdesk does"
    parsed = subcommands()
    missing = sorted(set(parsed) - set(rows))
    assert not missing, f"subcommands missing from the README's Commands table: {missing}"
    unknown = sorted(set(rows) - set(parsed) - {""})
    assert not unknown, f"the README lists subcommands that do not exist: {unknown}"
    for name, sp in parsed.items():
        if name in PASSTHROUGH:
            continue
        for action in options(sp):
            flag = action.option_strings[-1]
            assert flag in rows[name], f"README: the peerdesk {name} row does not name {flag}"
    bench = rows["bench"]
    for figure in re.findall(r"[a-z]+", subcommands()["bench"]._actions[1].help.split(":")[1]):
        if figure not in ("root", "two", "network", "namespaces", "default"):
            assert figure in bench, f"README: peerdesk bench does not list {figure}"
