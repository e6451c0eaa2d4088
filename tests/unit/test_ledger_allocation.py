"""How a refund's fen are taken off order lines (SPEC §5 rule 2): exact, never below zero."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shop.ledger.services import RefundShare, allocate_refund, spread


def test_spread_gives_each_key_its_proportional_share_when_it_divides_evenly() -> None:
    assert spread(600, {1: 100, 2: 200, 3: 300}) == {1: 100, 2: 200, 3: 300}
    assert spread(300, {1: 100, 2: 200, 3: 300}) == {1: 50, 2: 100, 3: 150}


def test_spread_hands_the_left_over_fen_to_the_largest_remainders() -> None:
    # 10 over 1:2:4 is 1.43 / 2.86 / 5.71: floors 1, 2, 5 leave 2 fen for the two largest parts
    assert spread(10, {1: 10, 2: 20, 3: 40}) == {1: 1, 2: 3, 3: 6}


def test_spread_breaks_ties_towards_the_smaller_key() -> None:
    assert spread(1, {5: 1, 3: 1, 9: 1}) == {3: 1}
    assert spread(2, {5: 1, 3: 1, 9: 1}) == {3: 1, 5: 1}
    assert spread(1, {2: 7, 1: 7}) == {1: 1}


def test_spread_leaves_out_keys_that_get_nothing() -> None:
    assert spread(1, {1: 1, 2: 1000}) == {2: 1}
    assert spread(5, {1: 0, 2: 10}) == {2: 5}


def test_spread_of_nothing_or_over_nothing_is_empty() -> None:
    assert spread(0, {1: 100}) == {}
    assert spread(10, {1: 0, 2: 0}) == {}
    assert spread(10, {}) == {}


def test_spread_refuses_more_than_the_weights_hold() -> None:
    with pytest.raises(ValueError):
        spread(301, {1: 100, 2: 200})


def test_spreading_the_whole_amount_gives_every_key_exactly_its_weight() -> None:
    weights = {1: 12_345, 2: 1, 3: 99_999_999}
    assert spread(sum(weights.values()), weights) == weights


def test_a_refund_by_amount_is_spread_over_the_lines_and_adds_up_exactly() -> None:
    shares = allocate_refund(1001, {10: 38_400, 11: 11_800}, {})
    assert shares == [RefundShare(10, 766, 0), RefundShare(11, 235, 0)]
    assert sum(s.amount_fen for s in shares) == 1001


def test_a_refund_by_lines_comes_off_the_named_lines_with_their_quantities() -> None:
    shares = allocate_refund(12_800, {10: 38_400, 11: 11_800}, {10: (12_800, 1)})
    assert shares == [RefundShare(10, 12_800, 1)]


def test_a_named_line_with_too_little_left_gives_what_it_has_and_the_rest_is_spread() -> None:
    # line 10 already gave 1,000 of its 12,800 to an earlier refund by amount
    shares = allocate_refund(12_800, {10: 11_800, 11: 5_900, 12: 5_900}, {10: (12_800, 1)})
    assert shares == [RefundShare(10, 11_800, 1), RefundShare(11, 500, 0), RefundShare(12, 500, 0)]


def test_goods_are_refunded_before_shipping() -> None:
    # 15.00 of goods still recognised, 10.00 of shipping: a 20.00 refund takes all the goods
    shares = allocate_refund(2_000, {1: 1_000, 2: 500}, {})
    assert shares == [RefundShare(1, 1_000, 0), RefundShare(2, 500, 0)]
    # once the goods are all refunded, what is left is shipping and writes no entry
    assert allocate_refund(1_000, {1: 0, 2: 0}, {}) == []


def test_a_full_refund_takes_every_line_down_to_zero() -> None:
    remaining = {1: 12_800, 2: 3_000, 3: 0}
    targeted = {1: (12_800, 1), 2: (3_000, 2)}
    shares = allocate_refund(15_800 + 1_000, remaining, targeted)
    assert shares == [RefundShare(1, 12_800, 1), RefundShare(2, 3_000, 2)]


def test_a_named_line_with_nothing_left_still_carries_its_quantity() -> None:
    shares = allocate_refund(500, {1: 0, 2: 5_000}, {1: (500, 1)})
    assert shares == [RefundShare(1, 0, 1), RefundShare(2, 500, 0)]


weights_strategy = st.dictionaries(
    st.integers(min_value=1, max_value=10_000_000),
    st.integers(min_value=0, max_value=100_000_000),
    min_size=1,
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(weights=weights_strategy, data=st.data())
def test_spread_is_exact_bounded_and_within_a_fen_of_the_true_share(weights, data) -> None:
    total = sum(weights.values())
    amount = data.draw(st.integers(min_value=0, max_value=total))
    shares = spread(amount, weights)
    assert sum(shares.values()) == amount
    if total == 0:
        assert shares == {}
        return
    assert set(shares) <= set(weights)
    for key, weight in weights.items():
        share = shares.get(key, 0)
        assert 0 <= share <= weight
        assert abs(share - Fraction(amount * weight, total)) < 1


@settings(max_examples=400, deadline=None)
@given(remaining=weights_strategy, data=st.data())
def test_any_refund_takes_exactly_its_goods_part_and_leaves_no_line_below_zero(
    remaining, data
) -> None:
    goods_left = sum(remaining.values())
    amount = data.draw(st.integers(min_value=1, max_value=goods_left + 5_000))
    named = data.draw(st.lists(st.sampled_from(sorted(remaining)), unique=True, max_size=4))
    targeted = {
        line: (
            data.draw(st.integers(min_value=1, max_value=remaining[line] + 1_000)),
            data.draw(st.integers(min_value=1, max_value=50)),
        )
        for line in named
    }
    shares = allocate_refund(amount, remaining, targeted)
    assert sum(s.amount_fen for s in shares) == min(amount, goods_left)
    assert len({s.order_line_id for s in shares}) == len(shares)
    for share in shares:
        assert 0 <= share.amount_fen <= remaining[share.order_line_id]
        assert share.quantity == targeted.get(share.order_line_id, (0, 0))[1]
    assert {line for line in targeted} <= {s.order_line_id for s in shares}
