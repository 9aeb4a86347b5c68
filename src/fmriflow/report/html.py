"""HTML building blocks of the report: the page, tables, escaping and number formats.

Everything here returns strings; nothing reads files. The page carries its CSS inline and
links to nothing, so it opens offline.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

PathLike = str | Path

_MAX_INLINE_SOURCES = 6  # beyond this many files, a caption lists its sources in a <details>

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:1rem 2rem 3rem;background:#fff}
header{border-bottom:1px solid #d0d7de;margin-bottom:1rem}
nav a{margin-right:1rem;color:#0969da;text-decoration:none}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f3f6;position:sticky;top:0}
tbody tr:nth-child(even){background:#f8f9fb}
tr.excluded td{background:#fff1f0}
.scroll{max-height:28rem;overflow:auto;border:1px solid #d0d7de;display:inline-block;max-width:100%}
.scroll table{margin:0}
.cards{display:flex;flex-wrap:wrap;gap:.6rem}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .8rem;min-width:9rem;font-size:.8rem}
.card .value{font-size:1.5rem;font-weight:600}
.good{border-left:4px solid #1a7f37}.warn{border-left:4px solid #bf8700}.bad{border-left:4px solid #cf222e}
.note{padding:.4rem .6rem;background:#fff8f8}
.notrun{padding:.4rem .6rem;background:#f6f8fa;border-left:4px solid #8c959f}
figure{margin:1rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption,.source{font-size:.8rem;color:#57606a}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.8rem}
code{font-size:.85em}
details{margin:.5rem 0}summary{cursor:pointer}
"""


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: a header with a table of contents, then one <section> per item."""
    nav = "".join(f'<a href="#{sid}">{esc(heading)}</a>' for sid, heading, _ in sections)
    body = "\n".join(f'<section id="{sid}">\n<h2>{esc(heading)}</h2>\n{content}\n</section>'
                     for sid, heading, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{esc(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"<header>\n<h1>{esc(title)}</h1>\n<nav>{nav}</nav>\n</header>\n{body}\n</main>\n</body>\n</html>\n"
    )


def table(headers: Sequence[str], rows, *, table_id: str | None = None, scroll: bool = False,
          row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    rows = list(rows)
    classes = list(row_classes) if row_classes is not None else [""] * len(rows)
    body = "\n".join((f'<tr class="{esc(cls)}">' if cls else "<tr>") + "".join(f"<td>{esc(cell(v))}</td>" for v in row)
                     + "</tr>" for row, cls in zip(rows, classes))
    attr = f' id="{esc(table_id)}"' if table_id else ""
    out = f"<table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    return f'<div class="scroll">{out}</div>' if scroll else out


def key_value_table(data: Mapping[str, Any], table_id: str | None = None) -> str:
    rows = [(k, v if isinstance(v, (str, int, float)) or v is None else json.dumps(v, sort_keys=True, default=str))
            for k, v in data.items()]
    return table(["Key", "Value"], rows, table_id=table_id)


def details(summary: str, content: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>\n{content}\n</details>"


def not_run(what: str, why: str) -> str:
    """The note a section shows when its step did not run (disabled in the config, or no input given)."""
    return f'<p class="notrun"><b>Not run:</b> {esc(what)} ({esc(why)}).</p>'


def sources_html(paths: Sequence[PathLike]) -> str:
    items = [f"<code>{esc(str(p))}</code>" for p in paths]
    if len(items) <= _MAX_INLINE_SOURCES:
        return ", ".join(items)
    return details(f"{len(items)} files", "<br>".join(items))


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def cell(value: Any) -> str:
    """Text of a table cell: 'n/a' for missing, integers without '.0', other floats to 4 significant digits."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def fmt(value: Any, spec: str) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return format(int(value) if spec == "d" else float(value), spec)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def name(path: PathLike) -> str:
    return Path(path).name
