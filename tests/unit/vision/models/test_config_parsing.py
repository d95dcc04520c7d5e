"""config.yaml and labels from clients: every failure is InvalidArgument naming the key, with a bounded
message, in bounded time and memory (aliases refused, nesting and size limited, repeated keys refused)."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from nnprobe_services.errors import InvalidArgument
from nnprobe_services.repository.quoting import MAX_QUOTE, quote
from nnprobe_services.vision.models import config

FIELD = "metadata.config_yaml"
#: The longest message a refusal may carry: the field, fixed wording and a few quotes of user data.
MAX_MESSAGE = 400
VALID = "input: {height: 8, width: 8}\n"


def billion_laughs(levels: int = 9) -> str:
    """The classic nested-alias document: ``levels`` lists of 9 aliases of the list before."""
    items = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "input:\n  width: 1\n  height:\n" + "".join(f"    - {item}\n" for item in items)


def refusal(text, field=FIELD) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        config.parse_yaml(text, field)
    assert len(str(caught.value)) <= MAX_MESSAGE, str(caught.value)
    return caught.value


def test_the_alias_bomb_is_refused_at_once_naming_the_alias():
    text = billion_laughs()
    assert len(text) < 600  # expands to 9**9 strings
    error = refusal(text)
    assert error.field == FIELD
    assert "alias *a0" in error.message and "line 5" in error.message


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (
            "input: {height: 8, width: 8}\npreprocessing: {mean: [a, b, c]}",
            f"{FIELD}.preprocessing.mean[0]",
            "number, got 'a'",
        ),
        (
            "input: {height: 8, width: 8}\npreprocessing: {std: [1, 0, 1]}",
            f"{FIELD}.preprocessing.std[1]",
            "positive",
        ),
        ("input: {height: 8, width: 8, value_range: [a, 1]}", f"{FIELD}.input.value_range[0]", "number"),
        ("input: {height: 8, width: 8, value_range: {a: 1}}", f"{FIELD}.input.value_range", "list of 2"),
        ("input: {height: 8, width: 8, value_range: [0, .inf]}", f"{FIELD}.input.value_range[1]", "finite"),
        (
            "input: {height: 8, width: 8, value_range: [0, 1.0e+999]}",
            f"{FIELD}.input.value_range[1]",
            "finite",
        ),
        (
            "input: {height: 8, width: 8}\npreprocessing: {mean: [" + "9" * 400 + ", 0, 0]}",
            f"{FIELD}.preprocessing.mean[0]",
            "finite",
        ),
        ("- input", FIELD, "mapping"),
        ("just text", FIELD, "mapping"),
        ("input: {height: 8, width: 8}\ninput: {height: 8, width: 8}", FIELD, "repeats the key 'input'"),
        ("input: {height: 8, width: 8, height: 9}", FIELD, "repeats the key 'height'"),
        ("[" * 100 + "]" * 100, FIELD, "deeper than"),
        ("a: " + "[" * 5000, FIELD, "deeper than"),
        ("input: {height: " + "9" * 5000 + ", width: 8}", FIELD, "ValueError"),
        ("input: {height: 8, width: 8}\noutput: softmax", f"{FIELD}.output", "logits, probabilities"),
        ("input: {height: 8, width: 8}\nnum_classes: 0", f"{FIELD}.num_classes", "1..100000"),
        ("input: {height: 8, width: 8}\ntask: [x]", f"{FIELD}.task", "image_classification"),
        ("input: {height: 8, width: 8}\n<<: {task: x}\ntask: image_classification", FIELD, "repeats"),
        (b"input: {height: 8, width: 8}\nlabels: \xff.txt", FIELD, "not UTF-8 text (byte 37 is 0xff)"),
        ("a: !!python/object/apply:os.system [ls]", FIELD, "constructor"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(text, field, words):
    error = refusal(text)
    assert error.field == field
    assert words in error.message


def test_quoted_user_data_is_capped():
    long_name = "x" * 10_000
    error = refusal(f"input: {{height: 8, width: 8}}\nlabels: {long_name}")
    assert error.field == f"{FIELD}.labels"
    error = refusal(f"input: {{height: 8, width: 8, channel_order: {long_name}}}")
    assert "xxx..." in error.message
    keys = "\n".join(f"k{i}{'y' * 200}: 1" for i in range(100))
    assert "and 95 more" in refusal(keys).message
    assert len(quote(10**5000)) <= MAX_QUOTE and len(quote([[1] * 10**4] * 10**4)) <= MAX_QUOTE
    with pytest.raises(InvalidArgument) as caught:
        config.check_name("n" * 100_000, "metadata.name")
    assert len(caught.value.message) <= MAX_MESSAGE


def test_output_and_num_classes_round_trip():
    parsed = config.parse_yaml(VALID + "output: Probabilities\nnum_classes: 10\n")
    assert (parsed.output, parsed.num_classes) == ("probabilities", 10)
    assert config.parse_yaml(parsed.to_yaml()) == parsed
    plain = config.parse_yaml(VALID)
    assert (plain.output, plain.num_classes) == ("logits", None)
    assert "output" not in plain.to_dict()


def test_labels_from_bytes_must_be_utf8():
    assert config.parse_labels(b"ant\nbee\n\n") == ("ant", "bee")
    with pytest.raises(InvalidArgument) as caught:
        config.parse_labels(b"ant\n\xc3(", "metadata.labels")
    assert caught.value.field == "metadata.labels" and "byte 4 is 0xc3" in caught.value.message


YAMLISH = st.lists(
    st.sampled_from(
        [
            *"ab01.-:,[]{}&*!<>|#'\"\n -\t",
            "input",
            "height",
            "width",
            "mean",
            "std",
            "preprocessing",
            "labels",
            "output",
            "&x ",
            "*x",
            "<<: ",
        ]
    ),
    max_size=120,
).map("".join)


def _outcome(parse, data):
    try:
        parse(data)
    except InvalidArgument as error:
        assert len(str(error)) <= MAX_MESSAGE, str(error)


@settings(max_examples=400, deadline=None)
@given(st.one_of(YAMLISH, st.text(max_size=300)))
def test_any_text_is_a_config_or_invalid_argument(text):
    _outcome(lambda t: config.parse_yaml(t, FIELD), text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_config_or_labels_or_invalid_argument(data):
    _outcome(lambda d: config.parse_yaml(d, FIELD), data)
    _outcome(lambda d: config.parse_labels(d, "metadata.labels"), data)


@st.composite
def documents(draw):
    """Config-shaped documents with arbitrary values where the schema wants numbers, names and mappings."""
    value = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )
    keys = st.sampled_from([*config.KEYS, "height", "width", "mean", "std", "value_range", "resize"])
    document = draw(st.dictionaries(keys, value, max_size=6))
    if draw(st.booleans()):
        document["input"] = draw(st.dictionaries(keys, value, max_size=5))
    return yaml.safe_dump(document)


@settings(max_examples=400, deadline=None)
@given(documents())
def test_any_config_shaped_document_is_a_config_or_invalid_argument(text):
    _outcome(lambda t: config.parse_yaml(t, FIELD), text)
