"""Two uploads racing to create one model, on two repository objects sharing a folder (two replicas): both
pass the checks before either publishes (a barrier inside the validation holds them there). The one that
publishes first makes the model; the other becomes a version of it only when its config and labels are
the same, and is ALREADY_EXISTS otherwise. Whatever the order, the folder ends as one upload's config and
labels, and every version holds the bytes of the upload that was told it got that version."""

from __future__ import annotations

import hashlib
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import AlreadyExists, ServiceError
from nnprobe_services.vision.models import config as model_config
from nnprobe_services.vision.models import repository

from tests.support import tiny_cnn

CONFIGS = (tiny_cnn.CONFIG_YAML, tiny_cnn.CONFIG_YAML.replace("16}", "16, channel_order: bgr}"))
LABELS = (tiny_cnn.LABELS, ("a1", "b2", "c3", "d4", "e5"))


def race(root, uploads):
    """Run ``uploads`` ((config, labels, bytes) each) at once, one replica each; their results or errors."""
    replicas = [repository.ModelRepository(root, max_model_bytes=1 << 16) for _ in uploads]
    barrier = threading.Barrier(len(uploads))
    results: list[object] = [None] * len(uploads)

    def validate(*_args) -> None:
        barrier.wait(timeout=30)  # every upload has passed its checks before any publishes

    def run(i: int) -> None:
        config, labels, data = uploads[i]
        pending = replicas[i].begin_upload(
            "m",
            fmt="onnx",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            config_yaml=config,
            labels="\n".join(labels),
        )
        pending.write(data)
        try:
            results[i] = replicas[i].install(pending, validate)
        except ServiceError as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    choices=st.lists(st.tuples(st.sampled_from(range(2)), st.sampled_from(range(2))), min_size=2, max_size=3)
)
def test_racing_new_model_uploads_never_mix(tmp_path_factory, choices):
    root = tmp_path_factory.mktemp("race")
    uploads = [(CONFIGS[c], LABELS[lab], bytes([i]) * 100) for i, (c, lab) in enumerate(choices)]
    results = race(root, uploads)
    won = [i for i, r in enumerate(results) if isinstance(r, repository.VersionEntry)]
    lost = [i for i, r in enumerate(results) if not isinstance(r, repository.VersionEntry)]
    assert won, results
    assert all(isinstance(results[i], AlreadyExists) for i in lost), results
    entry = repository.ModelRepository(root, max_model_bytes=1 << 16).get("m")
    kept = (entry.config, entry.labels)
    for i in won:
        config, labels, data = uploads[i]
        assert (model_config.parse_yaml(config).__dict__ | {"labels": "labels.txt"}) == kept[0].__dict__
        assert labels == kept[1]
        (version,) = [v for v in entry.versions if v.version == results[i].version]  # type: ignore[union-attr]
        assert version.path.read_bytes() == data
    for i in lost:
        config, labels, _ = uploads[i]
        assert (config, labels) != (CONFIGS[choices[won[0]][0]], LABELS[choices[won[0]][1]])
    assert sorted(results[i].version for i in won) == list(range(1, len(won) + 1))  # type: ignore[union-attr]


def test_the_second_of_two_new_models_with_other_configs_is_already_exists(tmp_path):
    results = race(tmp_path, [(CONFIGS[0], LABELS[0], b"a" * 100), (CONFIGS[1], LABELS[0], b"b" * 100)])
    (error,) = [r for r in results if isinstance(r, AlreadyExists)]
    assert error.field == "metadata.config_yaml" and "exists with other config" in error.message
    (entry,) = [r for r in results if isinstance(r, repository.VersionEntry)]
    assert entry.version == 1
    assert [
        v.version for v in repository.ModelRepository(tmp_path, max_model_bytes=1 << 16).get("m").versions
    ] == [1]


def test_two_new_models_with_the_same_config_become_versions_one_and_two(tmp_path):
    results = race(tmp_path, [(CONFIGS[0], LABELS[0], b"a" * 100), (CONFIGS[0], LABELS[0], b"b" * 100)])
    assert sorted(r.version for r in results) == [1, 2]  # type: ignore[union-attr]
