"""Text prompts made from labels: the plan's captions and the text-conditioned generators' prompts.

A template is a ``str.format`` pattern over these fields (class names with underscores turned to spaces):

- ``{class}``: the class name, for single-label data ("a photo of a {class}");
- ``{attributes}``: every group's class name, in group order, joined by spaces — the DeepFashion study's
  "A person wearing {attributes} clothes" gives "A person wearing lattice sleeveless no dress ... clothes";
- ``{<group name>}``: one group's class name ("a {color} {shape}").
"""

from __future__ import annotations

import string
from typing import Protocol, Sequence

from synthaug.data.schema import LabelSchema
from synthaug.errors import SettingError


class Prompted(Protocol):
    """What a prompt is made from: a plan item's own prompt (or None) and its label vector."""

    prompt: str | None
    labels: Sequence[int]


DEFAULT_TEMPLATES: dict[str, str] = {
    "single_label": "a photo of a {class}",  # CLIP's and SD's usual single-label prompt
    "attributes": "A person wearing {attributes} clothes",  # the DeepFashion attribute study's captions
}


def default_template(schema: LabelSchema) -> str:
    """``DEFAULT_TEMPLATES["single_label"]`` for one label group, ``["attributes"]`` for several."""
    return DEFAULT_TEMPLATES["single_label" if schema.is_single_label else "attributes"]


def label_words(class_name: str) -> str:
    """A class name as prompt words: underscores become spaces ("v_neckline" -> "v neckline")."""
    return " ".join(class_name.replace("_", " ").split())


def template_fields(schema: LabelSchema) -> list[str]:
    """The fields a template may use with this schema."""
    fields = ["attributes"] + [g.name for g in schema.groups]
    return (["class"] + fields) if schema.is_single_label else fields


def check_template(schema: LabelSchema, template: str) -> None:
    """Checks that ``template`` uses only fields this schema provides.

    Raises:
        ValueError: naming the unknown field and the allowed ones.
    """
    try:
        used = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise SettingError(f"prompt_template {template!r} is not a valid str.format pattern: {e}.") from None
    allowed = template_fields(schema)
    for f in used:
        if f not in allowed:
            hint = " ({class} needs single-label data; use {attributes})" if f == "class" else ""
            raise SettingError(f"prompt_template {template!r} uses field {{{f}}}{hint}; allowed fields for "
                             f"this label schema: {', '.join('{' + a + '}' for a in allowed)}.")


def caption(schema: LabelSchema, labels: Sequence[int] | None, template: str | None = None) -> str:
    """The prompt for one label vector (one class index per group).

    Args:
        schema: the label schema.
        labels: class indices, one per group; None gives the empty (unconditional) prompt.
        template: a ``str.format`` pattern (see the module docstring); None picks :func:`default_template`.

    Raises:
        ValueError: if the template uses a field the schema lacks, or ``labels`` has the wrong length.
    """
    if labels is None:
        return ""
    template = default_template(schema) if template is None else template
    if len(labels) != len(schema.groups):
        raise SettingError(f"labels {tuple(labels)} has {len(labels)} entries but the schema has "
                         f"{len(schema.groups)} label groups.")
    names = {g.name: label_words(g.classes[int(i)]) for g, i in zip(schema.groups, labels)}
    values = {**names, "attributes": " ".join(names.values())}
    if schema.is_single_label:
        values["class"] = values["attributes"]
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError):
        check_template(schema, template)  # raises a clear message
        raise


def captions_for_items(
    schema: LabelSchema, items: Sequence[Prompted], template: str | None = None,
) -> list[str]:
    """One prompt per plan item: ``item.prompt`` when set, else :func:`caption` of ``item.labels``."""
    return [it.prompt if it.prompt is not None else caption(schema, it.labels, template) for it in items]
