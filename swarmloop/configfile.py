"""Load a TOML config file into the pydantic model of the package that owns it.

A wrong key or type becomes one line that names the file and the key, e.g.
`configs/node.toml: server.port: Input should be a valid integer`; a check spanning several
keys names their table: `configs/node.toml: limits: max_n must not exceed max_batch_size ...`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from swarmloop.errors import UserError

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    # a validator's own ValueError reads as a sentence of its own, without pydantic's prefix
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}"


def read_toml(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}), so not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:  # permission denied, a FIFO gone wrong, ...
        raise UserError(f"{path}: cannot read the config file ({exc.strerror or exc.__class__.__name__})") from None


def load_config(path: Path | str | None, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Validate `path` (or the model's defaults when None) with `overrides` applied on top.

    Overrides use dotted keys ("server.port") and skip None values, so CLI flags that were not
    given leave the file's value alone."""
    data = read_toml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path or 'config'}: {describe_validation_error(exc)}") from None
