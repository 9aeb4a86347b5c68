"""Per-subject texts from participants.tsv: a template over its columns, or a free-text column."""

from __future__ import annotations

import string
from pathlib import Path

import pandas as pd

from ..datasets.participants import bare, read_participants
from ..errors import InputError


def template_columns(template: str) -> list[str]:
    """The participants.tsv columns a template names ("sex: {sex}; age: {age}" -> ["sex", "age"])."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise InputError(None, f"text template {template!r} is not a format string ({exc})", settings=["text_template"]) from exc
    if any(not name or not name.isidentifier() for name in fields):
        raise InputError(None, f"text template {template!r}: every {{field}} must name a column", settings=["text_template"])
    return fields


def subject_texts(participants: str | Path, template: str = "", column: str = "") -> dict[str, str]:
    """Bare subject label -> text: ``template`` filled with the subject's row, or its ``column`` as is.

    Exactly one of ``template`` and ``column`` is given. A missing value reads "n/a", as in the file.
    """
    if bool(template) == bool(column):
        raise InputError(None, "give either a text template or a text column, not "
                         + ("both" if template else "neither"), settings=["text_template", "text_column"])
    table = read_participants(participants)  # every column as text
    needed = [column] if column else template_columns(template)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise InputError(participants, f"the text {'column' if column else 'template'} names {missing}, which "
                         f"participants.tsv lacks (columns: {list(table.columns)})",
                         settings=["text_column" if column else "text_template"])
    table = table.fillna("n/a").replace("", "n/a")  # an empty cell is a missing value too
    ids = [bare(p) for p in table["participant_id"]]
    if column:
        return dict(zip(ids, table[column].astype(str)))
    return {s: template.format_map(row) for s, row in zip(ids, table[needed].to_dict("records"))}


def answer_text(value) -> str:
    """A target value as the language model writes it: integers without a decimal point, other
    numbers to 2 decimals at most, anything else as is."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if pd.isna(number):
        return "n/a"
    return str(int(number)) if number.is_integer() else f"{number:.2f}".rstrip("0")


__all__ = ["answer_text", "subject_texts", "template_columns"]
