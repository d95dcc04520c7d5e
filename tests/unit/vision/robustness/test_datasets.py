"""The data-set store: uploads round-trip byte for byte, limits are enforced as images arrive, and a server
folder outside the datasets root is never read, whatever the name (a property test over path texts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument, NotFound, ResourceExhausted
from nnprobe_services.vision.robustness.datasets import DatasetCollector, DatasetLimits, DatasetStore

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(20))


@pytest.fixture
def store(tmp_path) -> DatasetStore:
    root = tmp_path / "root"
    (root / "inside" / "cat").mkdir(parents=True)
    (root / "inside" / "cat" / "a.png").write_bytes(PNG)
    (tmp_path / "outside" / "dog").mkdir(parents=True)
    (tmp_path / "outside" / "dog" / "b.png").write_bytes(PNG)
    return DatasetStore(tmp_path / "stored", DatasetLimits(3, 100), root)


def test_an_upload_round_trips_and_replaces_the_one_of_its_name(store):
    collector = DatasetCollector(store.limits)
    collector.add(PNG, "cat")
    collector.add(b"\xff\xd8jpeg", " dog ")
    store.save("set", collector)
    loaded = store.load("set")
    assert (loaded.images, loaded.labels) == ([PNG, b"\xff\xd8jpeg"], ["cat", "dog"])
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
        DatasetCollector(DatasetLimits(10, 40)).add(PNG + PNG, "cat")


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
