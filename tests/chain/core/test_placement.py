"""Rendezvous placement: every node computes the same holders for an object, and few objects move."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.core.cid import CID, RAW
from chain.core.placement import Replication, holders, ranked

MEMBERS = ["node-1", "node-2", "node-3", "node-4", "node-5", "node-6", "node-7"]


def cid(i: int) -> CID:
    return CID(RAW, hashlib.sha256(b"object %d" % i).digest())


@given(st.integers(0, 10**6), st.permutations(MEMBERS), st.integers(1, 7))
def test_every_node_computes_the_same_holders(i, order, factor):
    chosen = holders(cid(i), order, factor)
    assert chosen == holders(cid(i), MEMBERS, factor)
    assert len(chosen) == factor == len(set(chosen))


def test_objects_spread_evenly():
    counts = Counter(node for i in range(7000) for node in holders(cid(i), MEMBERS, 3))
    assert set(counts) == set(MEMBERS)
    assert all(2600 < n < 3400 for n in counts.values())  # 3,000 each expected


def test_a_leaving_node_moves_only_what_it_held():
    remaining = [m for m in MEMBERS if m != "node-4"]
    for i in range(2000):
        before, after = holders(cid(i), MEMBERS, 3), holders(cid(i), remaining, 3)
        if "node-4" in before:
            assert set(before) - {"node-4"} < set(after)  # the others keep it, one more takes it
        else:
            assert before == after


def test_a_joining_node_takes_a_fair_share_and_nothing_moves_between_others():
    joined = [*MEMBERS, "node-8"]
    taken = 0
    for i in range(4000):
        before, after = holders(cid(i), MEMBERS, 3), holders(cid(i), joined, 3)
        if "node-8" in after:
            taken += 1
            assert len(set(before) - set(after)) == 1
        else:
            assert before == after
    assert 1200 < taken < 1800  # 3/8 of 4,000 = 1,500


def test_fewer_members_than_the_factor_means_all_of_them():
    assert sorted(holders(cid(1), ["b", "a"], 3)) == ["a", "b"]
    assert ranked(cid(1), ["a", "a", "b"]) in (["a", "b"], ["b", "a"])


def test_bad_factors_are_refused():
    with pytest.raises(ValueError):
        holders(cid(1), MEMBERS, 0)
    with pytest.raises(ValueError):
        Replication(minimum=3, target=2)
    assert Replication() == Replication(2, 3)
