"""docs/reference.md, generated from the code: every setting, every spec field, every command.

`make docs` (python -m banditgate_app.reference docs/reference.md) writes it; a test
fails when the checked-in page differs from what this module renders.
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer.main
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from banditgate.settings import CoreSettings
from banditgate.spec import ExperimentSpec
from banditgate_app.cli import app
from experiments.controller import ControllerSettings
from experiments.settings import ControlSettings
from reward_ingest.settings import IngestSettings
from router.settings import RouterSettings

# Each settings class and the processes that read it (the trainer reads CoreSettings only).
SETTINGS: list[tuple[type[BaseSettings], str]] = [
    (CoreSettings, "Every process."),
    (RouterSettings, "The router: `serve`, `router`."),
    (
        IngestSettings,
        "The reward webhook, joiner and exporter: `serve`, `ingest`, `workers` (joiner, exporter).",
    ),
    (ControlSettings, "The control plane: `serve`, `control`."),
    (ControllerSettings, "The rollout controller: `serve`, `workers` (controller)."),
]

HEADER = """\
# banditgate reference

Generated from the code by `make docs` (`python -m banditgate_app.reference
docs/reference.md`): the settings classes (`banditgate/settings.py` and each
component's), the experiment spec (`banditgate/spec.py`) and the CLI. Do not edit
by hand; a test fails when this page is out of date.
"""


class Undocumented(ValueError):
    """A setting or spec field without a description: the reference would have a hole."""


def render() -> str:
    parts = [HEADER, *_settings(), *_spec(), *_commands()]
    return "\n".join(parts).rstrip() + "\n"


def _settings() -> Iterator[str]:
    yield "## Settings\n"
    yield (
        "Environment variables (prefix `BANDITGATE_`), read when a process starts. Lists are "
        'comma-separated (`a,b`) or JSON (`["a","b"]`). The trainer reads only the '
        "settings every process reads.\n"
    )
    readers_of: dict[str, list[str]] = {}
    for cls, readers in SETTINGS:
        own = {
            name: info
            for name, info in cls.model_fields.items()
            if cls is CoreSettings or name not in CoreSettings.model_fields
        }
        yield f"### {cls.__name__}\n"
        yield f"{readers}\n"
        yield "| variable | type | default | meaning |"
        yield "|---|---|---|---|"
        prefix = cls.model_config.get("env_prefix", "")
        for name, info in own.items():
            meaning = _described(info, f"{cls.__name__}.{name}")
            readers_of.setdefault(f"{prefix}{name.upper()}", []).append(cls.__name__)
            yield (
                f"| `{prefix}{name.upper()}` | {_type(info.annotation)} | {_default(info)} "
                f"| {_cell(meaning)} |"
            )
        yield ""
    for variable, classes in readers_of.items():
        if len(classes) > 1:
            yield (
                f"`{variable}` is read by {' and '.join(classes)}: in a process that runs "
                "both (`serve`), one value sets both.\n"
            )


def _spec() -> Iterator[str]:
    yield "## Experiment spec\n"
    yield (
        "YAML or JSON; a bad spec is refused with the field path and the reason. The same "
        "schema is in the control plane's OpenAPI (`/docs`, `POST /v1/experiments`). "
        "`banditgate validate -f spec.yaml` checks a spec without applying it.\n"
    )
    shown: dict[type[BaseModel], str] = {}
    for path, model in _models(ExperimentSpec, ""):
        yield f"### `{path or '(top level)'}`\n"
        if model in shown:
            yield f"The same fields as [`{shown[model]}`](#{_anchor(shown[model])}).\n"
            continue
        shown[model] = path
        if model.__doc__:
            yield f"{model.__doc__.strip()}\n"
        yield "| field | type | default | meaning |"
        yield "|---|---|---|---|"
        for name, info in model.model_fields.items():
            key = info.alias or name
            meaning = _described(info, f"{path}.{key}" if path else key)
            constraints = _constraints(info)
            if constraints:
                meaning = f"{meaning} ({constraints})"
            yield (f"| `{key}` | {_type(info.annotation)} | {_default(info)} | {_cell(meaning)} |")
        yield ""


def _models(model: type[BaseModel], path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """The model, then each nested model depth-first, with its path (`arms[]`, `policy.gate`)."""
    yield path, model
    for name, info in model.model_fields.items():
        key = info.alias or name
        for nested, is_list in _nested_models(info.annotation):
            child = f"{path}.{key}" if path else key
            yield from _models(nested, f"{child}[]" if is_list else child)


def _nested_models(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
    elif origin is list:
        for nested, _ in _nested_models(typing.get_args(annotation)[0]):
            yield nested, True
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _nested_models(arg)


def _commands() -> Iterator[str]:
    yield "## Commands\n"
    yield "`banditgate --help` and `banditgate COMMAND --help` say more.\n"
    yield "| command | what |"
    yield "|---|---|"
    environment: list[tuple[str, str, str]] = []
    for path, command in _walk(typer.main.get_command(app), "banditgate"):
        if hasattr(command, "commands"):  # a group
            continue
        yield f"| `{path}` | {_cell(_first_line(command.help))} |"
        for param in command.params:
            for var in _envvars(param):
                help_text = _first_line(getattr(param, "help", None))
                environment.append((var, f"{path} {param.opts[0]}", help_text))
    yield ""
    if environment:
        yield "Command options also read from the environment:\n"
        yield "| variable | option | meaning |"
        yield "|---|---|---|"
        seen: dict[str, list[str]] = {}
        meaning: dict[str, str] = {}
        for var, option, help_text in environment:
            seen.setdefault(var, []).append(option)
            meaning.setdefault(var, help_text)
        for var, options in seen.items():
            flags = sorted({option.rsplit(" ", 1)[1] for option in options})
            yield f"| `{var}` | {', '.join(f'`{f}`' for f in flags)} | {_cell(meaning[var])} |"
        yield ""


def _walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Each (sub)command of the CLI (typer's click objects) with its full name."""
    yield path, command
    for name in sorted(getattr(command, "commands", {})):
        sub = command.commands[name]
        if not sub.hidden:
            yield from _walk(sub, f"{path} {name}")


def _envvars(param: Any) -> list[str]:
    value = param.envvar
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ")


def _described(info: FieldInfo, where: str) -> str:
    if not info.description:
        raise Undocumented(f"{where} has no description: add Field(description=...)")
    return info.description


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(see below)"
    elif info.is_required():
        return "**required**"
    else:
        value = info.default
    if value is None:
        return "unset"
    if value in ([], {}, ""):
        return "empty"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, list):
        return "`" + ",".join(str(item) for item in value) + "`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _constraints(info: FieldInfo) -> str:
    """Bounds, lengths and patterns from the field's metadata (annotated-types objects)."""
    forms = {
        "ge": ">= {}",
        "gt": "> {}",
        "le": "<= {}",
        "lt": "< {}",
        "min_length": "at least {}",
        "pattern": "matches `{}`",
    }
    parts = []
    for item in info.metadata:
        for attribute, form in forms.items():
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(form.format(value))
    return ", ".join(parts)


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{arg}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(arg) for arg in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"map of {_type(args[0])} to {_type(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
    name = getattr(annotation, "__name__", str(annotation))
    if name == "SecretStr":
        return "secret"
    if name in ("Path", "PosixPath"):
        return "path"
    return names.get(name, name)


def _anchor(path: str) -> str:
    """GitHub's heading anchor for `### `path``."""
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_ ").replace(" ", "-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    """`python -m banditgate_app.reference [PATH]`: write the page there, or print it."""
    args = sys.argv[1:] if argv is None else argv
    page = render()
    if not args:
        sys.stdout.write(page)
        return 0
    target = Path(args[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
