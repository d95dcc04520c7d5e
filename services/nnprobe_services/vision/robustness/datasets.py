"""Labelled image data sets for robustness evaluation, stored under ``<data_dir>/vision/datasets``: one JSON
file per data set (encoded images in base64 with their labels), written atomically, so a reader sees the
old data set or the new one. A data set is uploaded image by image, or imported from a server folder in
ImageFolder layout (``<class>/<image file>``) under the configured datasets root."""

from __future__ import annotations

import base64
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from nnprobe_services.files import atomic_write

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class DatasetLimits:
    """Most images and most encoded bytes one data set may hold."""

    max_images: int
    max_bytes: int


@dataclass(frozen=True)
class Dataset:
    """A stored data set: ``images`` (encoded PNG/JPEG bytes) and their ``labels``, in order."""

    name: str
    images: list[bytes]
    labels: list[str]

    @property
    def bytes(self) -> int:
        return sum(len(image) for image in self.images)


def check_name(name: str, field: str = "name") -> str:
    """``name`` when it is a valid data-set name; ``InvalidArgument`` on ``field`` otherwise."""
    if not NAME.match(name):
        raise InvalidArgument(
            f"{name!r} is not a data-set name: 1 to 64 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit",
            field=field,
        )
    return name


def _check_readable(data: bytes, field: str) -> None:
    """``InvalidArgument`` on ``field`` when Pillow cannot read the image's structure (its header, and for
    a PNG every chunk's checksum); no pixels are decoded here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
    except Exception as error:  # Pillow raises many kinds for damaged files
        raise InvalidArgument(
            f"the image is not a readable PNG or JPEG ({error.__class__.__name__}: {error})", field=field
        ) from None


class DatasetCollector:
    """Gathers an upload's images while checking the limits as they arrive."""

    def __init__(self, limits: DatasetLimits) -> None:
        self.limits = limits
        self.images: list[bytes] = []
        self.labels: list[str] = []
        self.size = 0

    def add(self, data: bytes, label: str) -> None:
        """Add one image. ``InvalidArgument`` (empty image or label, not PNG/JPEG) or ``ResourceExhausted``
        (over a limit), naming ``images[<i>]`` or ``images``."""
        field = f"images[{len(self.images)}]"
        if not data:
            raise InvalidArgument("the image holds no bytes", field=f"{field}.data")
        if not data.startswith((b"\x89PNG", b"\xff\xd8")):
            raise InvalidArgument("give PNG or JPEG bytes", field=f"{field}.data")
        _check_readable(data, f"{field}.data")
        if not label.strip():
            raise InvalidArgument("every image needs a label", field=f"{field}.label")
        if len(self.images) >= self.limits.max_images:
            raise ResourceExhausted(
                f"more than {self.limits.max_images} images (vision.max_dataset_images)", field="images"
            )
        if self.size + len(data) > self.limits.max_bytes:
            raise ResourceExhausted(
                f"more than {self.limits.max_bytes} bytes of images (vision.max_dataset_bytes)",
                field="images",
            )
        self.images.append(data)
        self.labels.append(label.strip())
        self.size += len(data)


class DatasetStore:
    """The data sets of this server (``root``), and the folder server imports are read from."""

    def __init__(self, root: Path, limits: DatasetLimits, import_root: Path | None = None) -> None:
        self.root = root
        self.limits = limits
        self.import_root = import_root

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def save(self, name: str, collector: DatasetCollector) -> Dataset:
        """Store the collected images as ``name`` (replacing one of that name), atomically."""
        check_name(name)
        if not collector.images:
            raise InvalidArgument("give at least one image (or server_folder)", field="images")
        body = {
            "name": name,
            "labels": collector.labels,
            "images": [base64.b64encode(image).decode() for image in collector.images],
        }
        atomic_write(self.path(name), json.dumps(body).encode())
        return Dataset(name, list(collector.images), list(collector.labels))

    def import_folder(self, name: str, folder: str) -> Dataset:
        """Store the ImageFolder-layout ``folder`` (relative to the datasets root) as ``name``: each
        subfolder is a class, labelled by its name, its PNG/JPEG files in name order. ``FailedPrecondition``
        without a datasets root; ``InvalidArgument`` on ``server_folder`` for a path outside it;
        ``NotFound`` for a missing folder."""
        if self.import_root is None:
            raise FailedPrecondition(
                "this server has no datasets root (vision.datasets_dir); upload the images instead",
                field="server_folder",
            )
        root = self.import_root.resolve()
        relative = Path(folder)
        if relative.is_absolute() or ".." in relative.parts:
            raise InvalidArgument(
                "give a folder relative to the datasets root, without '..'", field="server_folder"
            )
        try:
            source = (root / relative).resolve()
            if not source.is_relative_to(root) or (source == root and folder not in ("", ".")):
                raise InvalidArgument("the folder lies outside the datasets root", field="server_folder")
            found = source.is_dir()
        except (ValueError, OSError) as error:  # a NUL byte, a name longer than the file system allows
            raise InvalidArgument(
                f"{folder[:80]!r} is not a usable folder path ({error.__class__.__name__}: {error})",
                field="server_folder",
            ) from None
        if not found:
            raise NotFound(f"no folder {folder!r} under the datasets root", field="server_folder")
        collector = DatasetCollector(self.limits)
        for class_dir in sorted(p for p in source.iterdir() if p.is_dir() and not p.is_symlink()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file() and not file.is_symlink():
                    collector.add(file.read_bytes(), class_dir.name)
        if not collector.images:
            raise InvalidArgument("the folder holds no <class>/<image>.png|jpg files", field="server_folder")
        return self.save(name, collector)

    def load(self, name: str, field: str = "dataset") -> Dataset:
        """The data set ``name``; ``NotFound`` on ``field`` when there is none."""
        check_name(name, field)
        path = self.path(name)
        if not path.is_file():
            raise NotFound(f"no data set {name!r}; upload it with UploadDataset", field=field)
        body = json.loads(path.read_bytes())
        return Dataset(name, [base64.b64decode(i) for i in body["images"]], list(body["labels"]))
