"""The CLI table: every `COMMANDS` entry resolves to a function, and a broken one is an error."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from icg.cli import COMMANDS, GROUP_HELP, build_app, resolve_command


@pytest.mark.parametrize("entry", COMMANDS, ids=[f"{g} {n}".strip() for g, n, *_ in COMMANDS])
def test_every_command_resolves_to_a_function(entry):
    group, name, module_name, attr = entry
    assert callable(resolve_command(module_name, attr))
    assert not group or group in GROUP_HELP, group


def test_every_command_is_registered():
    app = build_app()
    runner = CliRunner()
    for group, name, _, _ in COMMANDS:
        args = [group, name, "--help"] if group else [name, "--help"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)


def test_a_command_whose_module_fails_to_import_is_an_error():
    with pytest.raises(ModuleNotFoundError, match="icg.cli.missing"):
        resolve_command("icg.cli.missing", "generate")


def test_a_missing_command_function_is_an_error():
    with pytest.raises(AttributeError, match="no command function 'nothing'"):
        resolve_command("icg.cli.run", "nothing")


def test_build_app_fails_on_a_broken_entry(monkeypatch):
    monkeypatch.setattr("icg.cli.COMMANDS", [*COMMANDS, ("", "broken", "icg.cli.run", "nothing")])
    with pytest.raises(AttributeError, match="nothing"):
        build_app()
