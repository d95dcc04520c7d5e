"""Text read as a decimal number (model versions, repository folders, protocol versions, device indices,
ports, class indices): ``str.isdigit`` also accepts superscripts and other scripts' digits, which ``int``
refuses ("²") or reads as another number ("٣" is 3). Every reader takes ASCII digits only and answers
anything else with its own error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nnprobe._client import channel_targets
from nnprobe.vision.adversarial import _attack_request
from nnprobe_services.errors import InvalidArgument, NotFound
from nnprobe_services.server.config import ServerConfig
from nnprobe_services.vision.models import config as model_config
from nnprobe_services.vision.models.repository import ModelRepository
from nnprobe_services.vision.open_inference import protocol as oip

#: Digits of other scripts and superscripts next to ASCII ones.
DIGITISH = st.text(alphabet=st.sampled_from("0123456789²³¹٣۷߂੩१௮໗０"), min_size=0, max_size=4)


def ascii_decimal(text: str) -> bool:
    return bool(text) and all("0" <= c <= "9" for c in text)


@given(DIGITISH)
def test_versions_are_ascii_decimals(text):
    is_version = ascii_decimal(text) and not text.startswith("0") and int(text) <= model_config.MAX_VERSION
    assert model_config.is_version_name(text) == (ascii_decimal(text) and not text.startswith("0"))
    if is_version and int(text) >= 1:
        assert model_config.check_version(text) == int(text)
    else:
        with pytest.raises(InvalidArgument):
            model_config.check_version(text)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    (root / "m").mkdir()
    (root / "m" / "config.yaml").write_text("input: {height: 4, width: 4}\n")
    for folder in ("1", "3", "٣", "²", "07"):
        (root / "m" / folder).mkdir()
        (root / "m" / folder / "model.onnx").write_bytes(b"x")
    return ModelRepository(root, max_model_bytes=1 << 20)


def test_repository_versions_are_the_ascii_folders(repository):
    assert [v.version for v in repository.get("m").versions] == [1, 3]


class _Store:
    def __init__(self, repository):
        self.repository = repository

    def is_builtin(self, name):
        return False


@given(DIGITISH)
def test_protocol_versions_resolve_or_are_not_found(repository, text):
    core = oip.OpenInference(_Store(repository), None, max_batch_size=1, default_model="m")  # type: ignore[arg-type]
    try:
        assert core.resolve("m", text) == ("m", int(text) if text else 3)
        assert text in ("", "1", "3")
    except NotFound as error:
        assert text not in ("", "1", "3") and "is not found" in error.message


@given(DIGITISH)
def test_device_indices_are_ascii_decimals(tmp_path_factory, text):
    config = ServerConfig(service="vision", device=f"cuda:{text}")
    if ascii_decimal(text):
        assert config.validate().device == f"cuda:{text}"
    else:
        with pytest.raises(ValueError, match="device must be"):
            config.validate()


@given(DIGITISH)
def test_address_list_ports_are_ascii_decimals(text):
    if ascii_decimal(text):
        assert channel_targets(f"a:{text},b:1") == [f"a:{text}", "b:1"]
    else:
        with pytest.raises(ValueError, match="host:port"):
            channel_targets(f"a:{text},b:1")


@given(DIGITISH)
def test_attack_targets_are_indices_only_when_ascii(text):
    request = _attack_request(
        [b"x"],
        target=text,
        untargeted=False,
        method="fgsm",
        norm="linf",
        eps=None,
        step_size=None,
        steps=1,
        seed=0,
        random_start=None,
        early_stop=None,
        refine_steps=0,
        learning_rate=None,
        momentum_decay=None,
        cw_c=None,
        cw_confidence=0.0,
        model=None,
        top_k=1,
        transfer_models=(),
        transfer_addresses=(),
        names=None,
    )
    if ascii_decimal(text):
        assert request.target.class_index == int(text)
    elif text:
        assert request.target.label == text
