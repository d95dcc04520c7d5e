"""Version numbers of the model repository are never reused: a random life of uploads (next or explicit
versions, other weights, another config after the model is gone), deletes of versions and of whole models,
and restarts (a new repository object on the same folder) against a model kept here of every version ever
assigned. The model's own bookkeeping is independent of the repository's: a dict of (name, version) ->
sha256 and the highest version each name ever had."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from nnprobe_services.errors import AlreadyExists, FailedPrecondition, NotFound
from nnprobe_services.vision.models import repository

from tests.support import tiny_cnn

NAMES = ("a", "b")
WEIGHTS = tuple(bytes([i]) * (64 + i) for i in range(4))
OTHER_CONFIG = tiny_cnn.CONFIG_YAML.replace("16}", "16, channel_order: bgr}")


def accept(*_args) -> None:
    """A validation that accepts every staged file (the bytes are not models: versions are the subject)."""


def upload(repo, name, data, *, version=None, config=tiny_cnn.CONFIG_YAML):
    pending = repo.begin_upload(
        name,
        fmt="onnx",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        config_yaml=config,
        labels="\n".join(tiny_cnn.LABELS) if config else None,
        version=version,
    )
    pending.write(data)
    return repo.install(pending, accept), pending


class RepositoryLife(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="versions-"))
        self.repo = repository.ModelRepository(self.folder, max_model_bytes=1 << 16)
        self.ever: dict[tuple[str, int], str] = {}
        self.highest = dict.fromkeys(NAMES, 0)
        self.present: dict[str, set[int]] = {name: set() for name in NAMES}
        self.config = dict.fromkeys(NAMES, tiny_cnn.CONFIG_YAML)

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _installed(self, name: str, data: bytes, installed, pending) -> None:
        assert installed.version > self.highest[name], "a version number came back"
        previous = max(self.present[name], default=0)
        assert pending.previous_default == previous
        assert pending.default_version == installed.version
        self.ever[(name, installed.version)] = hashlib.sha256(data).hexdigest()
        self.highest[name] = installed.version
        self.present[name].add(installed.version)

    @rule(name=st.sampled_from(NAMES), data=st.sampled_from(WEIGHTS), other_config=st.booleans())
    def upload_next(self, name, data, other_config):
        config = OTHER_CONFIG if other_config else tiny_cnn.CONFIG_YAML
        if self.present[name] and config != self.config[name]:
            with pytest.raises(AlreadyExists):
                upload(self.repo, name, data, config=config)
            return
        installed, pending = upload(self.repo, name, data, config=config)
        assert installed.version == self.highest[name] + 1
        self.config[name] = config
        self._installed(name, data, installed, pending)

    @rule(name=st.sampled_from(NAMES), data=st.sampled_from(WEIGHTS), version=st.integers(1, 12))
    def upload_explicit(self, name, data, version):
        config = self.config[name]
        if version in self.present[name]:
            with pytest.raises(AlreadyExists):
                upload(self.repo, name, data, version=version, config=config)
        elif version <= self.highest[name]:
            with pytest.raises(FailedPrecondition) as refused:
                upload(self.repo, name, data, version=version, config=config)
            assert "never reused" in refused.value.message
        else:
            installed, pending = upload(self.repo, name, data, version=version, config=config)
            assert installed.version == version
            self._installed(name, data, installed, pending)

    @rule(name=st.sampled_from(NAMES), which=st.integers(0, 12))
    def delete_version(self, name, which):
        if which not in self.present[name]:
            with pytest.raises(NotFound):
                self.repo.delete(name, which)
            return
        assert self.repo.delete(name, which) == [which]
        self.present[name] -= {which}

    @rule(name=st.sampled_from(NAMES))
    def delete_model(self, name):
        if not self.present[name]:
            with pytest.raises(NotFound):
                self.repo.delete(name)
            return
        assert self.repo.delete(name) == sorted(self.present[name])
        self.present[name] = set()

    @rule()
    def restart(self):
        self.repo = repository.ModelRepository(self.folder, max_model_bytes=1 << 16)

    @invariant()
    def each_version_keeps_its_weights(self):
        for name in NAMES:
            assert self.repo.highest_version(name) == self.highest[name]
            if not self.present[name]:
                assert name not in self.repo.names()
                continue
            entry = self.repo.get(name)
            assert {v.version for v in entry.versions} == self.present[name]
            for v in entry.versions:
                assert hashlib.sha256(v.path.read_bytes()).hexdigest() == self.ever[(name, v.version)]


RepositoryLife.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_versions_are_never_reused = RepositoryLife.TestCase


def test_deleting_the_highest_version_and_the_model_keeps_counting(tmp_path):
    repo = repository.ModelRepository(tmp_path, max_model_bytes=1 << 16)
    assert upload(repo, "m", WEIGHTS[0])[0].version == 1
    second, pending = upload(repo, "m", WEIGHTS[1], config="")
    assert second.version == 2 and (pending.previous_default, pending.default_version) == (1, 2)
    assert repo.delete("m", 2) == [2]
    assert upload(repo, "m", WEIGHTS[2], config="")[0].version == 3
    assert repo.delete("m") == [1, 3]
    again = repository.ModelRepository(tmp_path, max_model_bytes=1 << 16)
    fresh, pending = upload(again, "m", WEIGHTS[3], config=OTHER_CONFIG)
    assert fresh.version == 4 and pending.previous_default == 0
    assert (tmp_path / repository.VERSIONS / "m").read_text() == "4\n"


def test_a_pinned_default_version_is_not_changed_by_an_upload(tmp_path):
    repo = repository.ModelRepository(tmp_path, max_model_bytes=1 << 16)
    upload(repo, "m", WEIGHTS[0], config=tiny_cnn.CONFIG_YAML + "default_version: 1\n")
    _, pending = upload(repo, "m", WEIGHTS[1], config="")
    assert (pending.previous_default, pending.default_version) == (1, 1)
