"""How results show themselves: a short text ``__repr__``, an HTML table for notebooks, pictures inline.

``@rich_result(pictures=..., tables=...)`` on a result dataclass (above ``@dataclass``) gives it:

- ``__repr__``: the class name and one line per non-empty field (``raw`` left out), each value summarised
  (``nnprobe.summary``: PNGs as ``<PNG 12.3 kB>``, arrays as dtype, shape and range); one line when short;
  never more than about 1,000 characters.
- ``_repr_html_``: the same fields as a compact table, the first rows of each table field, and every picture
  as ``<img src="data:image/png;base64,...">``. Colours inherit from the page (light and dark themes alike);
  no JavaScript; every text is escaped with ``html.escape``.
- ``to_pandas(table=None)`` when it has tables (``nnprobe.frames``; pandas is the optional extra
  ``nnprobe[pandas]``), and ``save(path, picture=None)`` when it has pictures (unless the class defines its
  own ``save``).

``pictures``: attribute names (fields or properties) holding PNG bytes or None. ``tables``: name -> an
attribute holding a list of dataclasses, or a function of the result returning a list of dicts; the first is
the default of ``to_pandas``.
"""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nnprobe.frames import Table, table_rows, to_pandas
from nnprobe.summary import is_empty, shorten, summarize

T = TypeVar("T")

#: Longest ``__repr__`` before fields are left out, and the rows an HTML table shows.
REPR_LIMIT = 900
HTML_ROWS = 12
_ONE_LINE = 100

_TABLE_STYLE = "border-collapse:collapse;color:inherit;background:transparent;font-size:0.9em;margin:0.3em 0"
_CELL_STYLE = (
    "padding:0.15em 0.6em;text-align:left;border-bottom:1px solid rgba(128,128,128,0.35);"
    "color:inherit;background:transparent;vertical-align:top"
)


def _fields(result: Any) -> list[tuple[str, Any]]:
    return [
        (f.name, getattr(result, f.name))
        for f in dataclasses.fields(result)
        if f.name != "raw" and not is_empty(getattr(result, f.name))
    ]


def text_repr(result: Any) -> str:
    """The short text form: one line when it fits in 100 characters, else a line per field."""
    name = type(result).__name__
    fields = _fields(result)
    one_line = f"{name}(" + ", ".join(f"{k}={summarize(v, 40)}" for k, v in fields) + ")"
    if len(one_line) <= _ONE_LINE:
        return one_line
    lines = [name]
    width = max(len(k) for k, _ in fields) if fields else 0
    used = len(name)
    for index, (key, value) in enumerate(fields):
        line = f"  {key.ljust(width)}  {summarize(value, 76 - width)}"
        if used + len(line) > REPR_LIMIT:
            lines.append(f"  … {len(fields) - index} more fields")
            break
        lines.append(line)
        used += len(line) + 1
    return "\n".join(lines)


def _cell(text: str, tag: str = "td") -> str:
    return f'<{tag} style="{_CELL_STYLE}">{html.escape(text)}</{tag}>'


def _fields_table(result: Any) -> str:
    rows = "".join(f"<tr>{_cell(k, 'th')}{_cell(summarize(v, 90))}</tr>" for k, v in _fields(result))
    caption = (
        f'<caption style="text-align:left;font-weight:bold">{html.escape(type(result).__name__)}</caption>'
    )
    return f'<table style="{_TABLE_STYLE}">{caption}{rows}</table>'


def rows_table(name: str, rows: Sequence[Mapping[str, Any]], limit: int = HTML_ROWS) -> str:
    """The first ``limit`` of ``rows`` as an HTML table titled ``name`` (escaped, values summarised)."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(_cell(c, "th") for c in columns)
    body = "".join(
        "<tr>" + "".join(_cell(summarize(row.get(c), 40)) for c in columns) + "</tr>" for row in rows[:limit]
    )
    more = len(rows) - limit
    if more > 0:
        body += f'<tr><td colspan="{len(columns)}" style="{_CELL_STYLE}">… {more} more rows</td></tr>'
    caption = (
        f'<caption style="text-align:left;font-style:italic">{html.escape(name)} ({len(rows)} rows)</caption>'
    )
    return f'<table style="{_TABLE_STYLE}">{caption}<tr>{head}</tr>{body}</table>'


def image_tag(png: bytes, title: str) -> str:
    """``png`` inline as an ``<img>`` with a caption ``title``."""
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (
        '<figure style="display:inline-block;margin:0.3em 0.6em 0.3em 0">'
        f'<img src="{source}" alt="{html.escape(title)}" style="max-width:100%;height:auto"/>'
        f'<figcaption style="font-size:0.85em">{html.escape(title)}</figcaption></figure>'
    )


def html_repr(result: Any, pictures: Sequence[str], tables: Mapping[str, Table]) -> str:
    """The HTML form: the fields table, the first rows of each table, then the pictures."""
    parts = [_fields_table(result)]
    parts += [rows_table(name, table_rows(result, table)) for name, table in tables.items()]
    for name in pictures:
        png = getattr(result, name)
        if png:
            parts.append(image_tag(bytes(png), name))
    return (
        '<div class="nnprobe-result" style="color:inherit;background:transparent">'
        + "".join(parts)
        + "</div>"
    )


def save_picture(result: Any, path: str | Path, picture: str | None, pictures: Sequence[str]) -> Path:
    """Write the PNG ``picture`` (default: the first one the result has) to ``path``; return the path.

    Raises ``ValueError`` when the result holds no such picture (ask for it: ``plot=True``).
    """
    names = [picture] if picture is not None else [n for n in pictures if getattr(result, n)]
    if picture is not None and picture not in pictures:
        raise ValueError(f"picture must be one of {list(pictures)}, not {picture!r}")
    png = getattr(result, names[0]) if names else None
    if not png:
        raise ValueError(f"the {type(result).__name__} has no picture; ask for one with plot=True")
    target = Path(path)
    target.write_bytes(bytes(png))
    return target


def rich_result(
    *, pictures: Sequence[str] = (), tables: Mapping[str, Table] | None = None
) -> Callable[[type[T]], type[T]]:
    """Class decorator (above ``@dataclass``) giving a result its text, HTML, picture and table forms."""
    table_map = dict(tables or {})
    picture_names = tuple(pictures)

    def decorate(cls: type[T]) -> type[T]:
        cls.__repr__ = text_repr  # type: ignore[method-assign,assignment]
        cls._repr_html_ = lambda self: html_repr(self, picture_names, table_map)  # type: ignore[attr-defined]
        if table_map:

            def frame(self: Any, table: str | None = None) -> Any:
                """The rows of ``table`` (default: the first) as a ``pandas.DataFrame``."""
                return to_pandas(self, table_map, table)

            cls.to_pandas = frame  # type: ignore[attr-defined]
        if picture_names and "save" not in cls.__dict__:

            def save(self: Any, path: str | Path, picture: str | None = None) -> Path:
                """Write a picture (default: the first present) as PNG to ``path``."""
                return save_picture(self, path, picture, picture_names)

            cls.save = save  # type: ignore[attr-defined]
        cls._pictures = picture_names  # type: ignore[attr-defined]
        cls._tables = table_map  # type: ignore[attr-defined]
        return cls

    return decorate


__all__ = [
    "HTML_ROWS",
    "REPR_LIMIT",
    "html_repr",
    "image_tag",
    "rich_result",
    "rows_table",
    "shorten",
    "text_repr",
]
