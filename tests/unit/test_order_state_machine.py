"""The order life cycle: every legal transition happens and is recorded, every other is refused."""

from __future__ import annotations

import itertools

import pytest

from shop.orders.models import TRANSITIONS, Order, Status
from shop.orders.services import InvalidTransition, transition

LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in targets]
ILLEGAL = [(a, b) for a, b in itertools.product(Status, Status) if b not in TRANSITIONS[a]]


def order_in(status: Status) -> Order:
    return Order(
        number="HQ-TEST",
        status=status,
        goods_fen=100,
        shipping_fen=0,
        total_fen=100,
        history=[],
        lines=[],
    )


@pytest.mark.parametrize(("start", "end"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transition_moves_the_order_and_records_it(start: Status, end: Status) -> None:
    order = order_in(start)
    transition(None, order, end, reason="test")  # type: ignore[arg-type]
    assert order.status == end
    assert [(h.from_status, h.to_status, h.reason) for h in order.history] == [(start, end, "test")]


@pytest.mark.parametrize(("start", "end"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_is_refused_and_changes_nothing(start: Status, end: Status) -> None:
    order = order_in(start)
    with pytest.raises(InvalidTransition) as refused:
        transition(None, order, end)  # type: ignore[arg-type]
    assert order.status == start
    assert order.history == []
    assert start.value in refused.value.message and end.value in refused.value.message


def test_terminal_states_have_no_way_out() -> None:
    assert TRANSITIONS[Status.CANCELLED] == frozenset()
    assert TRANSITIONS[Status.REFUNDED] == frozenset()


def test_every_state_is_reachable_from_draft() -> None:
    reached, frontier = {Status.DRAFT}, [Status.DRAFT]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(Status)
