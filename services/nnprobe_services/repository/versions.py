"""Version numbers of the model repository are never reused: ``<root>/.versions/<name>`` holds the highest
version model ``name`` ever had, written atomically before a version folder appears and kept after deletes
(of a version or of the whole model), so every later upload of that name gets a higher number."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from nnprobe_services.errors import FailedPrecondition
from nnprobe_services.repository import names

FOLDER = ".versions"


def taken(folder: Path) -> list[int]:
    """Every version-named entry of a model folder (folders, or files in their place), sorted."""
    try:
        children = [p.name for p in folder.iterdir()]
    except OSError:
        return []
    return sorted(int(child) for child in children if names.is_version_name(child))


def highest(root: Path, name: str) -> int:
    """The larger of the highest version recorded for ``name`` and the version folders present (0: none)."""
    try:
        recorded = int((root / FOLDER / name).read_text(encoding="ascii").strip())
    except FileNotFoundError:
        recorded = 0
    except (OSError, ValueError) as error:
        raise FailedPrecondition(
            f"the repository's {FOLDER}/{name} (the highest version model {name!r} had) cannot be read: "
            f"{error}; write that version into it",
            field="metadata.name",
        ) from None
    return max([recorded, *taken(root / name)])


def record_highest(root: Path, name: str, version: int) -> None:
    """Write ``version`` as ``name``'s highest, atomically (the caller holds the repository's lock)."""
    path = root / FOLDER / name
    path.parent.mkdir(exist_ok=True)
    staged = path.with_name(f".{name}.{uuid.uuid4().hex}")
    with staged.open("w", encoding="ascii") as handle:
        handle.write(f"{version}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staged, path)
