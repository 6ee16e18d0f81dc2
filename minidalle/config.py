"""YAML configs mapped onto (nested) dataclasses, overridable from the command line.

    cfg = parse_config(Stage1Config, ["--config", "configs/stage1_tiny.yaml", "--train.max_steps", "50"])

Every key in the YAML file and on the command line must name a field: an unknown key is an
error that lists the closest valid names. Values are converted to the field's declared type,
and a value that does not convert is an error naming the key, the type and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from minidalle.errors import ConfigError, OneLineParser

T = TypeVar("T")


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader with two changes: a key given twice in one mapping is refused (YAML would keep
    the last), and only true/false are booleans. YAML 1.1 also reads bare yes/no/on/off as booleans,
    which turned `mixed_precision: no` into False; a boolean setting still accepts those words."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1}).")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown config key {key!r} in {where}.{hint} Valid keys: {', '.join(sorted(valid))}."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"Config key {key!r}: cannot use {value!r} as {tp}.")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"Config key {key!r} is a section; give it a mapping, not {value!r}.")
        return build_dataclass(tp, value, where=key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key {key!r} expects a list, got {value!r}.")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"Config key {key!r} expects a mapping, got {value!r}.")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"Config key {key!r} expects true/false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"Config key {key!r} expects an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                pass
            else:
                if as_float.is_integer():
                    return int(as_float)
        raise ConfigError(f"Config key {key!r} expects an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"Config key {key!r} expects a number, got {value!r}.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"Config key {key!r} expects a number, got {value!r}.") from None
        if not math.isfinite(number):
            raise ConfigError(f"Config key {key!r} expects a finite number, got {value!r}.")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"Config key {key!r} expects a string, got {value!r}.")
        return str(value)
    return value


def build_dataclass(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a (possibly nested) mapping; unknown keys are errors."""
    types_by_name = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types_by_name:
            raise ConfigError(_unknown_key_message(key, list(types_by_name), where))
        kwargs[key] = _coerce(value, types_by_name[key], f"{where}.{key}" if where != "config" else key)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # the dataclass's own checks (__post_init__)
        raise ConfigError(f"{where}: {err}" if where != "config" else str(err)) from None
    return obj


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Config key {dotted!r}: {part!r} is a value, not a section.")
    node[parts[-1]] = value


def _check_dotted_key(cls: type, dotted: str) -> None:
    node_cls = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        types_by_name = _field_types(node_cls)
        if part not in types_by_name:
            where = ".".join(parts[:i]) or "the command line"
            raise ConfigError(_unknown_key_message(dotted, list(types_by_name), where))
        tp = types_by_name[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"Config key {dotted!r}: {part!r} is a value, not a section.")
            node_cls = tp


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file {str(path)!r} does not exist. Pass an existing YAML file, e.g. configs/."
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {str(path)!r} is not text (UTF-8); give a YAML file.") from None
    except ConfigError as err:
        raise ConfigError(f"Config file {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"Config file {str(path)!r} is not valid YAML: {' '.join(str(err).split())}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values.")
    return data


def load_json_object(path: str | Path) -> dict[str, Any]:
    """Read a JSON file that must hold an object; malformed files raise ConfigError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}.")
    return data


def _parse_value(key: str, raw: str) -> Any:
    """A command-line value read as YAML (numbers, lists, null), or kept as the string given."""
    if raw.strip() == "":
        return raw
    try:
        return yaml.load(raw, Loader=_ConfigLoader)
    except yaml.YAMLError:
        raise ConfigError(f"Override --{key}: cannot read {raw!r} (quote lists as '[1, 2]').") from None


def parse_config(
    cls: type[T],
    argv: list[str] | None = None,
    description: str | None = None,
    ignore_file_keys: tuple[str, ...] = (),
) -> T:
    """Parse ``--config FILE`` and ``--dotted.key value`` overrides into an instance of ``cls``.

    Overrides take the forms ``--train.lr 1e-4`` and ``--train.lr=1e-4``; ``--resume_from_checkpoint``
    is accepted as a shorthand for ``--train.resume_from_checkpoint`` when the config has it.
    ``ignore_file_keys``: top-level keys of the file that this command does not read (an evaluate
    command given the training config); on the command line they stay unknown keys.
    """
    parser = OneLineParser(description=description, allow_abbrev=False)
    parser.add_argument("--config", type=str, default=None, help="YAML config file (see configs/)")
    known, rest = parser.parse_known_args(argv)
    tree: dict[str, Any] = load_yaml(known.config) if known.config else {}
    for key in ignore_file_keys:
        tree.pop(key, None)
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ConfigError(f"Unexpected argument {token!r}: overrides look like --section.key value.")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ConfigError(f"Override {token!r} needs a value: {token} VALUE.")
            raw = rest[i + 1]
            i += 2
        if "." not in key:
            sections = [n for n, t in _field_types(cls).items() if dataclasses.is_dataclass(t)]
            owners = [s for s in sections if key in _field_types(_field_types(cls)[s])]
            if key not in _field_types(cls) and len(owners) == 1:
                key = f"{owners[0]}.{key}"
        _check_dotted_key(cls, key)
        _set_dotted(tree, key, _parse_value(key, raw))
    return build_dataclass(cls, tree)
