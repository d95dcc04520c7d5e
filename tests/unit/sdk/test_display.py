"""Every result the SDK exports reads well: a short text repr, well-formed escaped HTML without scripts, its
pictures inline, its tables as rows and DataFrames. Instances are large and hostile (tests/support)."""

from __future__ import annotations

import base64
import dataclasses
import html.parser
import io
import re

import numpy as np
import pandas
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from nnprobe.display import REPR_LIMIT
from nnprobe.frames import table_rows
from nnprobe.summary import summarize
from PIL import Image

from tests.support.results import HOSTILE, LIST_LENGTH, build, result_classes

VOID = {"img", "br", "hr", "meta", "input", "col"}
CLASSES = result_classes()


class TagChecker(html.parser.HTMLParser):
    """Tags must nest and close; records every tag, attribute and image source."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(markup: str) -> TagChecker:
    checker = TagChecker()
    checker.feed(markup)
    checker.close()
    assert checker.stack == [], f"unclosed tags: {checker.stack}"
    return checker


def test_the_walk_finds_the_results_of_every_service():
    names = {cls.__name__ for cls in CLASSES}
    assert {"AdversarialResult", "ReceptiveFieldResult", "TrainingJob", "GradientAnalysis"} <= names
    assert {"PermutationCheckResult", "FeedForwardResult", "ClassifyResult", "TruncationComparison"} <= names
    assert len(CLASSES) >= 30


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_repr_is_short_and_holds_no_bytes_or_long_arrays(cls):
    text = repr(build(cls))
    assert len(text) < 1000, text
    assert "b'" not in text and 'b"' not in text and "\\x" not in text
    assert "array(" not in text and "..." not in text
    assert text.startswith(cls.__name__)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_html_is_well_formed_escaped_and_script_free(cls):
    result = build(cls)
    markup = result._repr_html_()
    checker = parse(markup)
    holds_text = "<script>" in str([getattr(result, f.name) for f in dataclasses.fields(result)])
    assert "script" not in checker.tags
    assert not [a for a in checker.attributes if a.startswith("on")]
    assert "<script>" not in markup and HOSTILE not in markup
    assert ("&lt;script&gt;" in markup) == holds_text  # the hostile text is there, escaped
    assert "javascript:" not in markup.lower()
    # Theme-neutral: colours inherit and backgrounds are transparent; no fixed text colour.
    assert "color:inherit" in markup and "background:transparent" in markup
    assert not re.search(r"(?<![-\w])color:\s*#", markup)


@pytest.mark.parametrize("cls", [c for c in CLASSES if c._pictures], ids=lambda c: c.__name__)
def test_every_picture_is_inline_and_saves(cls, tmp_path):
    result = build(cls)
    images = parse(result._repr_html_()).images
    assert len(images) == len(cls._pictures)
    for name, source in zip(cls._pictures, images, strict=True):
        assert source.startswith("data:image/png;base64,")
        png = base64.b64decode(source.split(",", 1)[1])
        assert png == bytes(getattr(result, name))
        with Image.open(io.BytesIO(png)) as picture:
            assert picture.width > 0 and picture.height > 0
        saved = result.save(tmp_path / f"{name}.png", name) if len(cls._pictures) > 1 else None
        if saved is not None:
            assert saved.read_bytes() == png


@pytest.mark.parametrize("cls", [c for c in CLASSES if c._tables], ids=lambda c: c.__name__)
def test_tables_become_dataframes(cls):
    result = build(cls)
    for name in cls._tables:
        frame = result.to_pandas(name)
        assert isinstance(frame, pandas.DataFrame)
        assert len(frame) == len(table_rows(result, cls._tables[name]))
        assert len(frame) >= LIST_LENGTH  # each table row stands for one element of a 30-long list
    with pytest.raises(ValueError, match="table must be one of"):
        result.to_pandas("nope")


def test_the_attack_that_printed_605039_characters_now_prints_a_few_lines():
    from nnprobe.vision import AdversarialResult

    result = build(AdversarialResult)
    assert len(repr(result)) < REPR_LIMIT + 100
    assert "<PNG " in repr(result) and "float32[224×224×3]" in repr(result)
    perturbation = np.asarray(Image.open(io.BytesIO(result.perturbation_png)))
    assert perturbation.shape == (224, 224, 3)
    # Mid-gray is zero: the pixel of the largest |delta| is 255 (all deltas here are positive).
    assert perturbation.max() == 255


def test_classify_rows_follow_images_then_ranks():
    from nnprobe.vision import Classification, ClassifyResult, ClassScore

    result = ClassifyResult(
        results=[
            Classification(
                "a.jpg", [ClassScore(292, "tiger", 0.8), ClassScore(291, "lion", 0.1)], None, 1, 0, 0.0
            ),
            Classification("b.jpg", [ClassScore(58, "water snake", 0.65)], None, 1, 0, 0),
        ],
        model="alexnet",
        model_version="",
        preprocess_seconds=0.0,
        total_seconds=0.0,
    )
    frame = result.to_pandas()
    assert frame[["image", "rank", "label"]].values.tolist() == [
        ["a.jpg", 1, "tiger"],
        ["a.jpg", 2, "lion"],
        ["b.jpg", 1, "water snake"],
    ]
    assert repr(result).count("\n") <= 8


def test_gradient_norm_rows_are_one_per_run_and_distance():
    from nnprobe.sequence import GradientAnalysis, GradientRun

    norms = np.array([1.0, 0.5, 0.25])
    distances = np.array([3, 2, 1])
    run = GradientRun(
        "lstm", 0.9, 0.9, 1.0, None, distances, norms, None, None, norms * 2, 0.5, "vanishing", 0.1, 0.0
    )
    analysis = GradientAnalysis([run, run], 3, 4, 2, 0.01, None, 0.1)
    frame = analysis.to_pandas()
    assert len(frame) == 6 and frame["jacobian_norm"].tolist() == [1.0, 0.5, 0.25] * 2
    assert frame["bound"].isna().all()
    assert analysis.to_pandas("runs")["regime"].tolist() == ["vanishing", "vanishing"]


def test_to_pandas_without_pandas_says_what_to_install(monkeypatch):
    import sys

    from nnprobe.sequence import TruncationComparison

    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'nnprobe\[pandas\]'"):
        TruncationComparison([], 0.0, 0.0, "cpu", 1, None).to_pandas()


def test_save_without_a_picture_says_how_to_ask_for_one(tmp_path):
    from nnprobe.sequence import TruncationComparison

    with pytest.raises(ValueError, match="plot=True"):
        TruncationComparison([], 0.0, 0.0, "cpu", 1, None).save(tmp_path / "x.png")


@given(
    st.one_of(
        st.text(max_size=500),
        st.binary(max_size=300),
        st.floats(allow_nan=True),
        st.integers(),
        st.lists(st.text(max_size=50), max_size=40),
        st.dictionaries(st.text(max_size=20), st.floats(), max_size=20),
    ),
    st.integers(min_value=8, max_value=120),
)
@example(value=-(10**23), width=8).via("a 24-digit integer was shown whole")
@example(value=10**400, width=8)
def test_a_summary_never_exceeds_its_width_nor_shows_bytes(value, width):
    text = summarize(value, width)
    assert len(text) <= max(width, 24)
    if isinstance(value, bytes):
        assert text.startswith("<") and "\\x" not in text
