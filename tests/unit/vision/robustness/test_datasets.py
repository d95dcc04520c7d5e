"""The data-set store: uploads round-trip byte for byte, limits are enforced as images arrive, and a server
folder outside the datasets root is never read, whatever the name (a property test over path texts)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument, NotFound, ResourceExhausted
from nnprobe_services.vision.robustness.datasets import DatasetCollector, DatasetLimits, DatasetStore
from PIL import Image


def _encoded(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), (10, 20, 30)).save(buffer, format=kind)
    return buffer.getvalue()


PNG = _encoded("PNG")
JPEG = _encoded("JPEG")


@pytest.fixture
def store(tmp_path) -> DatasetStore:
    root = tmp_path / "root"
    (root / "inside" / "cat").mkdir(parents=True)
    (root / "inside" / "cat" / "a.png").write_bytes(PNG)
    (tmp_path / "outside" / "dog").mkdir(parents=True)
    (tmp_path / "outside" / "dog" / "b.png").write_bytes(PNG)
    return DatasetStore(tmp_path / "stored", DatasetLimits(3, 3 * len(JPEG)), root)


def test_an_upload_round_trips_and_replaces_the_one_of_its_name(store):
    collector = DatasetCollector(store.limits)
    collector.add(PNG, "cat")
    collector.add(JPEG, " dog ")
    store.save("set", collector)
    loaded = store.load("set")
    assert (loaded.images, loaded.labels) == ([PNG, JPEG], ["cat", "dog"])
    assert store.import_folder("set", "inside").labels == ["cat"]
    assert store.load("set").labels == ["cat"]
    assert [p.name for p in store.root.iterdir()] == ["set.json"]  # no temporary file left


def test_limits_name_their_field(store):
    collector = DatasetCollector(store.limits)
    with pytest.raises(InvalidArgument) as caught:
        collector.add(b"GIF89a", "cat")
    assert caught.value.field == "images[0].data"
    for _ in range(3):
        collector.add(PNG, "cat")
    with pytest.raises(ResourceExhausted) as caught:
        collector.add(PNG, "cat")
    assert caught.value.field == "images"
    with pytest.raises(ResourceExhausted):
        DatasetCollector(DatasetLimits(10, len(PNG) - 1)).add(PNG, "cat")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(["..", ".", "outside", "inside", "/", "x", "dog", "~"]), min_size=1, max_size=4)
)
def test_no_folder_outside_the_root_is_ever_read(store, parts):
    folder = "/".join(parts)
    resolved = (store.import_root / folder).resolve()
    inside = resolved.is_relative_to(store.import_root.resolve()) and ".." not in Path(folder).parts
    try:
        dataset = store.import_folder("x", folder)
    except (InvalidArgument, NotFound) as error:
        assert error.field == "server_folder"
        return
    assert inside and not folder.startswith("/")
    assert "dog" not in dataset.labels


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(min_size=1, max_size=40).map(lambda t: f"inside/{t}"),
        st.integers(256, 5000).map(lambda n: "a" * n),
        st.text(min_size=1, max_size=10).map(lambda t: f"{t}\x00{t}"),
    )
)
def test_any_folder_text_is_refused_or_read_naming_the_field(store, folder):
    """Whatever the text (NUL bytes, names longer than the file system allows), the import answers a
    data set or InvalidArgument / NotFound on ``server_folder``; never an operating-system error."""
    try:
        dataset = store.import_folder("x", folder)
    except (InvalidArgument, NotFound) as error:
        assert error.field == "server_folder"
        if "\x00" in folder or len(folder) > 255:
            assert isinstance(error, InvalidArgument) and "not a usable folder path" in str(error)
        return
    assert dataset.labels == ["cat"]


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["PNG", "JPEG"]),
    cut=st.integers(0, 200),
    flip=st.integers(0, 200),
    junk=st.binary(min_size=0, max_size=30),
)
def test_damaged_images_are_refused_naming_the_image(kind, cut, flip, junk):
    """The magic bytes of a PNG or JPEG followed by at most 30 junk bytes (no image fits there): always
    refused at upload on ``images[0].data``; a real image with a flipped byte and cut short: refused unless
    Pillow opens and checks it (an oracle run here on the same bytes)."""
    good = _encoded(kind)
    magic = good[:8] if kind == "PNG" else good[:2]
    damaged = bytearray(magic + junk) if junk else bytearray(good)
    if not junk:
        position = len(magic) + flip % (len(good) - len(magic))
        damaged[position] ^= 0xFF
        damaged = damaged[: len(damaged) - cut % len(good) // 2]
    try:
        with Image.open(io.BytesIO(bytes(damaged))) as image:
            image.verify()
        readable = True
    except Exception:
        readable = False
    collector = DatasetCollector(DatasetLimits(3, 10**6))
    assert not (junk and readable)
    if readable:
        collector.add(bytes(damaged), "cat")
        assert collector.images == [bytes(damaged)]
        return
    with pytest.raises(InvalidArgument) as caught:
        collector.add(bytes(damaged), "cat")
    assert caught.value.field == "images[0].data" and "not a readable PNG or JPEG" in str(caught.value)
