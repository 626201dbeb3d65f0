"""`autoprune search`'s options and SearchConfig's fields: one option per field, the same default, so the
CLI's list of options (typer needs them spelled out for --help) cannot drift from the config."""
from __future__ import annotations

import dataclasses

import typer.main

from autoprune.cli import app
from autoprune.search_job import SearchConfig

RENAMED = {"budget": "budgets", "agent_option": "agent_options"}  # repeatable flags, plural fields


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None  # required: model


def test_every_search_option_is_a_config_field_with_its_default():
    params = {RENAMED.get(p.name, p.name): p for p in typer.main.get_command(app).commands["search"].params}
    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    assert set(params) == set(fields)
    for name, param in params.items():
        default = _default(fields[name])
        cli_default = param.default
        if isinstance(default, dict):  # agent_options: KEY=VALUE strings on the command line
            default, cli_default = list(default), list(cli_default or [])
        assert cli_default == default or (cli_default in ((), []) and default in ([], None)), name
