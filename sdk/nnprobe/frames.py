"""Results as rows: flat dicts for HTML tables and ``pandas.DataFrame`` (pandas is an optional extra).

A table of a result is an attribute holding a list of dataclasses (each becomes a row; nested dataclasses
become dotted columns, ``height.size``), or a function of the result returning a list of dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

#: An attribute name, or a function returning the rows.
Table = str | Callable[[Any], list[dict[str, Any]]]

PANDAS_MISSING = "to_pandas() needs pandas, an optional extra: pip install 'nnprobe[pandas]'"


def flatten(item: Any, prefix: str = "") -> dict[str, Any]:
    """A dataclass as one flat dict (``raw`` left out; nested dataclasses as ``outer.inner`` keys)."""
    row: dict[str, Any] = {}
    for f in dataclasses.fields(item):
        if f.name == "raw":
            continue
        value = getattr(item, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            row.update(flatten(value, f"{prefix}{f.name}."))
        else:
            row[f"{prefix}{f.name}"] = value
    return row


def table_rows(result: Any, table: Table) -> list[dict[str, Any]]:
    """The rows of ``table`` of ``result``."""
    if callable(table):
        return table(result)
    items = getattr(result, table) or []
    return [flatten(item) if dataclasses.is_dataclass(item) else {table: item} for item in items]


def to_pandas(result: Any, tables: Mapping[str, Table], table: str | None = None) -> Any:
    """The rows of ``tables[table]`` (default: the first) as a ``pandas.DataFrame``.

    Raises ``ImportError`` saying what to install when pandas is missing, ``ValueError`` for an unknown
    table name.
    """
    try:
        import pandas
    except ImportError as error:
        raise ImportError(PANDAS_MISSING) from error
    name = next(iter(tables)) if table is None else table
    if name not in tables:
        raise ValueError(f"table must be one of {list(tables)}, not {table!r}")
    return pandas.DataFrame(table_rows(result, tables[name]))
