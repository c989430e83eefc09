"""The group-aware split's properties, on random data (hypothesis)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.data import split
from appliance.data.errors import SplitError

groups = st.lists(st.sampled_from([f"g{i}" for i in range(40)]), min_size=2, max_size=300)
fractions = st.floats(min_value=0.01, max_value=0.5)
seeds = st.integers(min_value=0, max_value=2**32)


@settings(max_examples=300, deadline=None)
@given(keys=groups, fraction=fractions, seed=seeds)
def test_no_group_on_both_sides_and_eval_at_least_the_fraction(keys, fraction, seed):
    try:
        plan = split.plan(keys, fraction, seed)
    except SplitError:
        # Only when no split exists: fewer than two groups, or even holding out every
        # group but the smallest falls short of the fraction.
        counts = {k: keys.count(k) for k in set(keys)}
        assert len(counts) < 2 or len(keys) - min(counts.values()) < math.ceil(fraction * len(keys))
        return
    train = {k for k in keys if not plan.is_eval(k)}
    held = {k for k in keys if plan.is_eval(k)}
    assert not train & held
    assert plan.eval_rows == sum(1 for k in keys if plan.is_eval(k))
    assert plan.eval_rows >= math.ceil(fraction * len(keys)) >= fraction * len(keys)
    assert plan.train_rows >= 1 and plan.train_rows + plan.eval_rows == len(keys)


@settings(max_examples=100, deadline=None)
@given(keys=groups, fraction=fractions, seed=seeds)
def test_deterministic_for_a_seed_whatever_the_row_order(keys, fraction, seed):
    try:
        a = split.plan(keys, fraction, seed)
    except SplitError:
        return
    shuffled = list(keys)
    random.Random(seed).shuffle(shuffled)
    assert split.plan(shuffled, fraction, seed) == a
    assert split.plan(list(keys), fraction, seed) == a


def test_a_large_group_alone_can_be_the_eval_set():
    keys = ["big"] * 9 + ["small"]
    for seed in range(20):
        plan = split.plan(keys, 0.5, seed)
        assert plan.eval_groups == {"big"} and plan.train_rows == 1


def test_seeds_give_different_splits():
    keys = [f"case{i % 50}" for i in range(500)]
    plans = {split.plan(keys, 0.1, s).eval_groups for s in range(10)}
    assert len(plans) > 1


@pytest.mark.parametrize(
    ("keys", "fraction", "needle"),
    [
        (["a"] * 10, 0.1, "at least two groups"),
        (["a"] * 9 + ["b"], 0.95, "cannot hold out 95%"),
        (["a", "b"], 0.0, "between 0 and 1"),
        (["a", "b"], 1.0, "between 0 and 1"),
    ],
)
def test_impossible_splits_are_refused(keys, fraction, needle):
    with pytest.raises(SplitError, match=needle):
        split.plan(keys, fraction, 0)


def test_group_key_reads_nested_fields_and_reports_missing():
    assert split.group_key({"meta": {"case": 7}}, "meta.case") == "7"
    assert split.group_key({"case": "x"}, "case") == '"x"'
    assert split.group_key({"case": None}, "case") is None
    assert split.group_key({}, "case") is None
