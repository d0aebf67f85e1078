"""YAML -> pydantic model, with errors that point at file:line:col.

We compose the YAML node tree once to remember where every key and value sits,
then validate the plain data with pydantic and map each error's ``loc`` back to
the node. Unknown keys get a did-you-mean from the model's own field names.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rayfleet.errors import ConfigError

__all__ = ["load_model", "validate_data"]

M = TypeVar("M", bound=BaseModel)
Loc = tuple[Any, ...]


def _marks(node: yaml.Node, loc: Loc, out: dict[Loc, tuple[yaml.Mark, yaml.Mark]]) -> None:
    """Record (key mark, value mark) for every path in the node tree."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = loc + (key_node.value,)
            out[child] = (key_node.start_mark, value_node.start_mark)
            _marks(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = loc + (i,)
            out[child] = (item.start_mark, item.start_mark)
            _marks(item, child, out)


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class that owns the last element of loc (for did-you-mean)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, typing.Annotated) or args:
        for arg in args:
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _clean_loc(loc: Loc) -> Loc:
    # pydantic adds union-member / validator tags like 'int' or 'function-after[...]'
    return tuple(p for p in loc if isinstance(p, int) or "[" not in str(p))


def _describe(model: type[BaseModel], err: dict[str, Any], loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        owner = model if len(loc) <= 1 else _model_at(model, loc[:-1])
        names = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else (
            "allowed keys: " + ", ".join(names) if names else "remove it")
        return f"unknown key '{key}' — {hint}"
    if kind == "missing":
        return "this field is required — add it"
    msg = err["msg"]
    msg = msg[0].lower() + msg[1:] if msg else msg
    if msg.startswith("value error, "):
        msg = msg[len("value error, "):]
    got = err.get("input")
    if isinstance(got, (dict, list)):
        return msg
    return f"got {got!r}; {msg}"


def validate_data(model: type[M], data: Any, *, source: str = "<config>",
                  marks: dict[Loc, tuple[yaml.Mark, yaml.Mark]] | None = None) -> M:
    """Validate plain data; raise ConfigError listing every problem with its location."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = _clean_loc(err["loc"])
            where = source
            mark_loc = loc
            while marks is not None and mark_loc and mark_loc not in marks:
                mark_loc = mark_loc[:-1]
            if marks is not None and mark_loc in marks:
                key_mark, value_mark = marks[mark_loc]
                m = key_mark if err["type"] in ("extra_forbidden",) or mark_loc != loc else value_mark
                where = f"{source}:{m.line + 1}:{m.column + 1}"
            lines.append(f"{where}: {_path(loc)}: {_describe(model, err, loc)}")
        raise ConfigError("\n".join(lines), hint=f"Fix {source} and run the command again.") from None


def load_model(model: type[M], path: str | Path, *, overrides: dict[str, Any] | None = None) -> M:
    """Read a YAML file into ``model``. Errors name file:line:col and the field."""
    path = Path(path)
    source = path.name if path.parent == Path(".") else str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file.", hint="Check the path.") from None
    except OSError as e:
        raise ConfigError(f"{source}: can't read it: {e.strerror}.") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: invalid YAML: {problem}.",
                          hint="Check indentation and quoting near that line.") from None
    marks: dict[Loc, tuple[yaml.Mark, yaml.Mark]] = {}
    if node is not None:
        _marks(node, (), marks)
    if overrides:
        data = dict(data or {})
        data.update(overrides)
    return validate_data(model, data, source=source, marks=marks)
