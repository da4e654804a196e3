"""The command line's options derived from the settings' declarations (``musc.inputs.values``): a
settings field declared once gets its flag, help, default and choices here without being written
again; and the help's look (an on/off flag shown without a value)."""
from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable, Optional

import typer
import typer.core

from musc.inputs.values import declared

METAVARS = {"ints": "<int,int,...>", "grid": "RxC"}
TYPES = {"int": int, "float": float}


class Command(typer.core.TyperCommand):
    """A command whose --help flag shows no ``<bool>`` value."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Group(typer.core.TyperGroup):
    """A group of commands whose --help flag shows no ``<bool>`` value."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


def flag(*names: str, help: str) -> Any:  # noqa: A002 - typer's name
    """An on/off option, shown without a value in the help."""
    return typer.Option(*names, metavar="", help=help)


def settings_options(settings_class: type, panel: str | None = None, flags: dict[str, str] | None = None,
                     skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One option per declared field of a settings class (but ``skip``): ``--field-name`` (or
    ``flags[name]``), its help with its choices and default, None when left out (the caller keeps
    the value it had: a configuration file's, the class's default)."""
    parameters = []
    for field in declared(settings_class):
        if field.name in skip:
            continue
        text = field.help
        if field.choices:
            text += f" One of: {', '.join(field.choices)}."
        if field.default is not None:
            text += f" Default: {field.default_text()}."
        names = [flags[field.name]] if flags and field.name in flags else []
        option = typer.Option(*names, help=text, metavar=METAVARS.get(field.kind), rich_help_panel=panel)
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[TYPES.get(field.kind, str)], option]))
    return parameters


def with_options(function: Callable, parameters: list[inspect.Parameter]) -> Callable:
    """``function`` (whose ``**values`` takes them) seen by typer with ``parameters`` added as options."""
    own = [p for p in inspect.signature(function).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    function.__signature__ = inspect.Signature(own + parameters)
    function.__annotations__ = {**function.__annotations__, **{p.name: p.annotation for p in parameters}}
    return function


def options_of(settings_class: type, panel: str | None = None, flags: dict[str, str] | None = None) -> Callable:
    """A decorator: the function's ``**values`` take one option per declared field of the settings
    class (``settings_options``)."""
    return lambda function: with_options(function, settings_options(settings_class, panel, flags))
