"""Transfer verdicts compare labels, never class indices: against the rule written out here, a verdict is
the same whatever order a transfer model numbers its classes in, and whatever indices its answers carry."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nnprobe_services.vision.attacks import verdicts
from nnprobe_services.vision.attacks.verdicts import Verdict
from nnprobe_services.vision.classification.classify import ClassScore

NAMES = st.lists(
    st.sampled_from(["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]), min_size=1, max_size=7, unique=True
)


def _reference(before: str, after: str, target: str | None, labels: list[str]) -> Verdict:
    if target is None:
        return Verdict.FOOLED if after != before else Verdict.NOT_FOOLED
    if target == "" or target not in labels:
        return Verdict.NOT_APPLICABLE
    return Verdict.FOOLED if after == target else Verdict.NOT_FOOLED


@given(
    labels=NAMES,
    picks=st.tuples(st.integers(0, 99), st.integers(0, 99)),
    target=st.one_of(st.none(), st.just(""), st.sampled_from(["ant", "cat", "eel", "hen"])),
    order=st.randoms(use_true_random=False),
    indices=st.tuples(st.integers(0, 999), st.integers(0, 999)),
)
def test_a_verdict_depends_on_labels_only(labels, picks, target, order, indices):
    before, after = (labels[p % len(labels)] for p in picks)
    shuffled = list(labels)
    order.shuffle(shuffled)
    expected = _reference(before, after, target, labels)
    for names in (labels, shuffled):  # the same model with its classes numbered otherwise
        # The answers' indices are arbitrary: only their labels may matter.
        first = ClassScore(indices[0], before, 0.5)
        second = ClassScore(indices[1], after, 0.5)
        result = verdicts.outcome("m", "", first, second, target, names, model_version=3)
        assert result.verdict is expected
        assert result.fooled == (expected is Verdict.FOOLED)
        assert (result.original_top1, result.top1, result.model_version) == (first, second, 3)
        assert (result.note != "") == (expected is Verdict.NOT_APPLICABLE)


@given(labels=NAMES, target=st.integers(-3, 9))
def test_the_target_label_is_the_attacked_models_name_of_the_class(labels, target):
    expected = labels[target] if 0 <= target < len(labels) else ""
    assert verdicts.target_label(labels, target) == expected
    assert verdicts.target_label(labels, None) is None


def test_labels_match_as_request_labels_do():
    assert verdicts.judge("Lion", " lion ", None, [])[0] is Verdict.NOT_FOOLED
    assert verdicts.judge("lion", "tiger", "Tiger", ["lion", "tiger"])[0] is Verdict.FOOLED
    assert verdicts.judge("lion", "tiger", "tiger", [])[0] is Verdict.NOT_APPLICABLE  # a model without labels
