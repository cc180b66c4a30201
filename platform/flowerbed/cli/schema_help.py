"""`flowerbed simulate --help`: every config group and key, from the schema itself.

Hydra's own help prints the composed YAML; a user choosing a value needs each key's
meaning, type, range and default. They come from the typed schema (`config/`): a field's
type and `Annotated` range, the attribute docstring written under it, and the default in
`conf/config.yaml`. `--help <section>` shows one section; Hydra's help stays behind
`--hydra-help`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
import types
import typing
from typing import Any, Literal

from flowerbed.config.rules import Range, field_types

USAGE = """usage: flowerbed simulate [group=option ...] [key=value ...]
       flowerbed simulate -m key=a,b,c ...    a sweep: every combination is a job
       flowerbed simulate --help [section]    this help, or one section's keys
       flowerbed simulate --hydra-help        Hydra's own help
"""


def schema_help(section: str | None = None) -> str:
    """The help text: config groups with their options, then each section's keys."""
    from flowerbed.config import FlowerbedConfig, compose_config, to_plain_dict
    from flowerbed.config.conf_dir import conf_dir

    defaults = to_plain_dict(compose_config())
    lines = [USAGE]
    if section is None:
        lines.append("config groups (group=option; files under conf/<group>/):")
        for group in sorted(p for p in conf_dir().iterdir() if p.is_dir() and p.name != "hydra"):
            options = ", ".join(sorted(f.stem for f in group.glob("*.yaml")))
            lines.append(f"  {group.name:<12} {options}")
        lines.append("")
    kinds = field_types(FlowerbedConfig)
    sections = [name for name, kind in kinds.items() if dataclasses.is_dataclass(kind)]
    if section not in (None, "top", *sections):
        raise ValueError(
            f"flowerbed simulate --help: no section {section!r}; the sections: top (the "
            f"top-level keys), {', '.join(sections)}"
        )
    if section in (None, "top"):
        lines.append("top-level keys:")
        top = {k: v for k, v in defaults.items() if k not in sections}
        lines += _keys(FlowerbedConfig, top, "", [k for k in kinds if k not in sections])
    for name in sections:
        if section in (None, name):
            kind = kinds[name]
            lines.append(f"{name}: {first_sentence(inspect.getdoc(kind) or '')}")
            keys = [f.name for f in dataclasses.fields(kind)]
            lines += _keys(kind, defaults[name], f"{name}.", keys)
    return "\n".join(lines)


def _keys(kind: type, defaults: dict[str, Any], prefix: str, keys: list[str]) -> list[str]:
    """One entry a key: `prefix+key = default    (type and range)`, then its docstring."""
    docs, hints = attribute_docs(kind), field_types(kind, extras=True)
    lines = []
    for key in keys:
        value, kind_of = _yaml(defaults.get(key)), describe_type(hints[key])
        lines.append(f"  {prefix}{key} = {value}    ({kind_of})")
        if key in docs:
            lines += textwrap.wrap(docs[key], 88, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return [*lines, ""]


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for field, doc in itertools.pairwise(body):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)
            ):
                docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def describe_type(hint: Any) -> str:
    """`int >= 1`, `fp32 | fp16 | bf16`, `float or null`: what a key accepts."""
    rules = [str(r) for r in getattr(hint, "__metadata__", ()) if isinstance(r, Range)]
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    options = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        named = [describe_type(a) for a in options if a is not type(None)]
        text = " | ".join(named) + (" or null" if type(None) in options else "")
    elif typing.get_origin(hint) is Literal:
        text = " | ".join(str(o) for o in options)
    elif typing.get_origin(hint) is list:
        text = f"list of {describe_type(options[0])}" if options else "list"
    else:
        text = getattr(hint, "__name__", str(hint))
    return " ".join([text, *rules])


def first_sentence(text: str) -> str:
    return " ".join(text.split()).split(". ")[0].rstrip(".")


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
