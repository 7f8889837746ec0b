"""Dataclass configs loaded from YAML with dotted command-line overrides.

One mechanism for every config section (model, parallel, data, train): a section is a dataclass with
typed fields and an optional ``validate()``; the root config is a dataclass of sections. YAML files may
``include:`` other YAML files (paths relative to the including file), merged depth-first before the
file's own keys. Overrides look like ``model.num_blocks=12`` and are parsed as YAML scalars/lists.

Every error names where the bad value came from (file or override) and the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and its source."""


# --------------------------------------------------------------------------------------------------
# Reading YAML (with includes) into a nested dict, remembering where each leaf came from
# --------------------------------------------------------------------------------------------------


def read_yaml(path: str | Path, _stack: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """Read a YAML config with its ``include:`` chain. Returns (nested dict, {dotted key: source})."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"include cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")

    merged: dict = {}
    sources: dict[str, str] = {}
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    for inc in includes:
        inc_dict, inc_sources = read_yaml(path.parent / inc, (*_stack, path))
        deep_merge(merged, inc_dict)
        sources.update(inc_sources)
    deep_merge(merged, raw)
    for key in _leaf_keys(raw):
        sources[key] = str(path)
    return merged, sources


def deep_merge(dst: dict, src: dict) -> None:
    """Merge ``src`` into ``dst`` in place: mappings merge key by key, anything else in ``src`` wins."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = v


def _leaf_keys(d: dict, prefix: str = "") -> Iterable[str]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaf_keys(v, key + ".")
        else:
            yield key


def apply_overrides(tree: dict, sources: dict[str, str], overrides: Iterable[str]) -> None:
    """Apply ``a.b.c=value`` overrides in place (value parsed as YAML: ints, floats, bools, lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. model.num_blocks=12)")
        key, text = item.split("=", 1)
        key = key.strip().lstrip("-")
        try:
            value = yaml.safe_load(text) if text.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from None
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
        sources[key] = f"override {item!r}"


# --------------------------------------------------------------------------------------------------
# Building dataclasses from dicts with type checks
# --------------------------------------------------------------------------------------------------


def build_dataclass(cls: type, data: dict, sources: dict[str, str] | None = None, prefix: str = ""):
    """Instantiate ``cls`` from a nested dict, checking keys and types; then call ``validate()``."""
    sources = sources or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(prefix.rstrip('.'), sources)}: expected a mapping for section {cls.__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            raise ConfigError(f"{_where(dotted, sources)}: unknown key {dotted!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted, sources)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field without default is missing
        raise ConfigError(f"section {prefix.rstrip('.') or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    return obj


def _where(dotted: str, sources: dict[str, str]) -> str:
    src = sources.get(dotted)
    if src is None:  # a section: report the source of any leaf inside it
        src = next((s for k, s in sources.items() if k.startswith(dotted + ".")), None)
    return src or "config"


def _coerce(tp, value, dotted: str, sources: dict[str, str]):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, sources, dotted + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, dotted, sources)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{_where(dotted, sources)}: bad value for {dotted!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{_where(dotted, sources)}: {dotted!r} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(dotted, sources)}: {dotted!r} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, f"{dotted}[{j}]", sources) for j, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(dotted, sources)}: {dotted!r} must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{dotted!r}: unsupported field type {tp}")
    raise ConfigError(
        f"{_where(dotted, sources)}: {dotted!r} must be {tp.__name__}, got {value!r} ({type(value).__name__})"
    )


def to_dict(obj) -> dict:
    """Dataclass -> plain nested dict (YAML/JSON serialisable)."""
    return dataclasses.asdict(obj)


def load_config(cls: type, paths: str | Path | Sequence[str | Path] | None = None, overrides: Iterable[str] = (),
                retired: dict[str, tuple[dict, str]] | None = None):
    """Load a root config dataclass from YAML files (each with its include chain; later files win) plus
    dotted overrides. ``retired``: {dotted section: (its former defaults, what replaced it)}, see ``drop_retired``."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    tree, sources = {}, {}
    for path in paths:
        part, part_sources = read_yaml(path)
        deep_merge(tree, part)
        sources.update(part_sources)
    apply_overrides(tree, sources, overrides)
    drop_retired(tree, sources, retired or {})
    return build_dataclass(cls, tree, sources)


def drop_retired(tree: dict, sources: dict[str, str], retired: dict[str, tuple[dict, str]]) -> None:
    """Remove sections that no longer exist from ``tree`` when they hold only their former defaults (the
    config.yaml files of older checkpoints dump every field); any other value is a ConfigError naming
    what replaced the section, so that a setting is never ignored silently."""
    for dotted, (defaults, replacement) in retired.items():
        *parents, name = dotted.split(".")
        node = tree
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or name not in node:
            continue
        value = node[name]
        if not isinstance(value, dict) or any(k not in defaults or v != defaults[k] for k, v in value.items()):
            raise ConfigError(f"{_where(dotted, sources)}: {dotted!r} was removed: {replacement}")
        del node[name]


def dump_yaml(obj, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
