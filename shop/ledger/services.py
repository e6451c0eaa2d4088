"""Writing the ledger (SPEC §5), keeping its daily totals, closing months and reading totals.

Payments are recognised with one INSERT … SELECT over the order lines, so a single webhook and
a sweep over a million lines share one statement. Refunds are spread over lines in Python,
where the rounding rule is easy to read and to test.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    and_,
    any_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased, selectinload

from shop.accounts.models import User
from shop.accounts.services import audit
from shop.catalog.models import County, District, Supplier
from shop.db import DbSession, dialect_insert, utcnow
from shop.errors import Conflict, InvalidInput
from shop.ledger.models import (
    DIMENSIONS,
    INDIVIDUAL,
    OUTSIDE_HUIZHOU,
    ClosedMonth,
    Cursor,
    DailyTotal,
    Kind,
    LedgerEntry,
    NotCounted,
    Source,
)
from shop.ledger.sql import (
    analyze_if_grown,
    bulk_work_mem,
    lock_ledger,
    month_of,
    shanghai_day,
    year_of,
)
from shop.orders.models import Channel, Order, OrderAddress, OrderLine, Refund, Status
from shop.procurement.models import Organisation
from shop.timezones import shanghai_today

ROLLUP_CURSOR = "ledger.rollup"
MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")

# Orders whose payment has been recognised stay in one of these states.
PAID_STATES = (
    Status.PAID,
    Status.SHIPPED,
    Status.COMPLETED,
    Status.PARTIALLY_REFUNDED,
    Status.REFUNDED,
)


# --- closed months ----------------------------------------------------------------------------


def closed_months(session: DbSession) -> set[str]:
    return set(session.scalars(select(ClosedMonth.month)))


def booking_day(day: date, closed: set[str], today: date) -> date:
    """An event's day, unless its month is closed: then it lands on today (rule 6)."""
    return today if f"{day:%Y-%m}" in closed else day


def _booking_day_sql(day: ColumnElement[Any], closed: set[str], today: date) -> Any:
    if not closed:
        return day
    return case((month_of(day).in_(sorted(closed)), literal(today)), else_=day)


# --- recognition: payments ----------------------------------------------------------------------


def _payment_rows(orders_where: ColumnElement[bool], closed: set[str], today: date) -> Select[Any]:
    """One row per line of the selected paid orders, attributed by rule 4."""
    o = Order.__table__
    line = OrderLine.__table__
    address = OrderAddress.__table__
    org = Organisation.__table__
    buyer = User.__table__
    county = County.__table__
    address_district = aliased(District.__table__, name="address_district")
    unit_district = aliased(District.__table__, name="unit_district")
    is_unit = o.c.channel == Channel.UNIT.value
    in_huizhou = case((is_unit, true()), else_=address.c.district_id.is_not(None))
    natural_day = shanghai_day(o.c.paid_at)
    return (
        select(
            literal(Source.PAYMENT.value).label("source"),
            o.c.id.label("source_id"),
            line.c.id.label("line_no"),
            _booking_day_sql(natural_day, closed, today).label("day"),
            o.c.paid_at.label("occurred_at"),
            o.c.number.label("reference"),
            o.c.id.label("order_id"),
            line.c.id.label("order_line_id"),
            line.c.amount_fen.label("amount_fen"),
            line.c.quantity.label("quantity"),
            line.c.county_id.label("county_id"),
            county.c.name.label("county"),
            case(
                (is_unit, unit_district.c.name),
                (address_district.c.name.is_not(None), address_district.c.name),
                else_=literal(OUTSIDE_HUIZHOU),
            ).label("district"),
            case((is_unit, org.c.type), else_=literal(INDIVIDUAL)).label("buyer_type"),
            case(
                (in_huizhou, literal(Kind.PURCHASE.value)), else_=literal(Kind.SALES_HELP.value)
            ).label("kind"),
            o.c.channel.label("channel"),
            o.c.funding.label("funding"),
            line.c.category.label("category"),
            line.c.sku.label("sku"),
            line.c.supplier_id.label("supplier_id"),
            func.coalesce(o.c.organisation_id, buyer.c.employer_organisation_id).label(
                "organisation_id"
            ),
            and_(line.c.certified, line.c.cooperation_county).label("counted"),
            case(
                (~line.c.certified, literal(NotCounted.UNCERTIFIED.value)),
                (~line.c.cooperation_county, literal(NotCounted.NOT_COOPERATION.value)),
                else_=literal(""),
            ).label("reason"),
            literal(utcnow(), type_=LedgerEntry.__table__.c.created_at.type).label("created_at"),
        )
        .select_from(o)
        .join(line, line.c.order_id == o.c.id)
        .join(county, county.c.id == line.c.county_id)
        .join(buyer, buyer.c.id == o.c.user_id)
        .outerjoin(org, org.c.id == o.c.organisation_id)
        .outerjoin(unit_district, unit_district.c.id == org.c.district_id)
        .outerjoin(address, address.c.id == line.c.address_id)
        .outerjoin(address_district, address_district.c.id == address.c.district_id)
        .where(orders_where, o.c.paid_at.is_not(None))
    )


_ENTRY_COLUMNS = (
    "source",
    "source_id",
    "line_no",
    "day",
    "occurred_at",
    "reference",
    "order_id",
    "order_line_id",
    "amount_fen",
    "quantity",
    "county_id",
    "county",
    "district",
    "buyer_type",
    "kind",
    "channel",
    "funding",
    "category",
    "sku",
    "supplier_id",
    "organisation_id",
    "counted",
    "reason",
    "created_at",
)


def _write_payment_entries(
    session: DbSession, orders_where: ColumnElement[bool], *, optimistic: bool = False
) -> int:
    """Insert the selected orders' entries, skipping those already written.

    `optimistic` (for a sweep that has already left out the orders with entries) first tries
    a plain INSERT, which PostgreSQL writes a fifth faster than one that checks each row for a
    conflict; only when a concurrent writer got to some of the same orders first does it fall
    back to skipping conflicts.
    """
    lock_ledger(session, "ROW EXCLUSIVE")
    closed = closed_months(session)
    rows = _payment_rows(orders_where, closed, shanghai_today(utcnow()))
    # SQLAlchemy keeps an INSERT's row count only when asked (PostgreSQL reports -1 else)
    plain = (
        dialect_insert(session, LedgerEntry.__table__)
        .from_select(list(_ENTRY_COLUMNS), rows)
        .execution_options(preserve_rowcount=True)
    )
    if optimistic:
        try:
            with session.begin_nested():
                return int(getattr(session.execute(plain), "rowcount", 0) or 0)
        except IntegrityError:
            pass
    statement = plain.on_conflict_do_nothing(index_elements=["source", "source_id", "line_no"])
    result = session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


def recognise_order(session: DbSession, order: Order) -> int:
    """Rules 1, 3, 4: one entry per line of a paid order, once. Returns entries written.

    Called in the transaction that marks the order paid, so the order and its entries commit
    together; the unique (source, source_id, line_no) key makes a second call write nothing.
    """
    session.flush()
    return _write_payment_entries(session, Order.__table__.c.id == order.id)


def recognise_unrecognised_payments(session: DbSession) -> int:
    """Write the entries of every paid order that has none (a sweep; one statement)."""
    session.flush()
    o = Order.__table__
    paid = o.c.status.in_([s.value for s in PAID_STATES])
    bulk_work_mem(session)
    if not _has_any_payment_entry(session):
        # PostgreSQL plans the look-up in an empty ledger as a scan of it, repeated for every
        # order while the statement fills it. The unique key keeps the entries once anyway.
        return _write_payment_entries(session, paid, optimistic=True)
    missing = ~exists().where(
        LedgerEntry.__table__.c.source == Source.PAYMENT.value,
        LedgerEntry.__table__.c.source_id == o.c.id,
    )
    if session.get_bind().dialect.name != "postgresql":
        return _write_payment_entries(session, and_(paid, missing), optimistic=True)
    # The orders still to recognise, found first as an array: PostgreSQL would otherwise join
    # every paid order's lines to everything before it leaves out the recognised ones.
    todo = func.array(select(o.c.id).where(paid, missing).correlate(None).scalar_subquery())
    return _write_payment_entries(session, o.c.id == any_(todo), optimistic=True)


def _has_any_payment_entry(session: DbSession) -> bool:
    return (
        session.scalar(
            select(LedgerEntry.id).where(LedgerEntry.source == Source.PAYMENT.value).limit(1)
        )
        is not None
    )


# --- recognition: refunds -----------------------------------------------------------------------


def spread(amount: int, weights: Mapping[int, int]) -> dict[int, int]:
    """Split `amount` over keys in proportion to their weights, in whole fen that add up exactly.

    Largest remainder: everyone gets the floor of their share, and the fen left over go one
    each to the largest fractional parts (ties to the smaller key). With amount ≤ sum(weights),
    nobody gets more than their weight.
    """
    total = sum(weights.values())
    if amount == 0 or total == 0:
        return {}
    if amount > total:
        raise ValueError(f"cannot spread {amount} over {total}")
    shares = {key: amount * weight // total for key, weight in weights.items()}
    left = amount - sum(shares.values())
    by_remainder = sorted(weights, key=lambda key: (-(amount * weights[key] % total), key))
    for key in by_remainder[:left]:
        shares[key] += 1
    return {key: share for key, share in shares.items() if share}


@dataclass(frozen=True)
class RefundShare:
    order_line_id: int
    amount_fen: int  # positive: what is taken off the line
    quantity: int


def allocate_refund(
    amount_fen: int, remaining: Mapping[int, int], targeted: Mapping[int, tuple[int, int]]
) -> list[RefundShare]:
    """Rule 2: which line each fen of a refund comes off.

    `remaining` is each line's goods still recognised; `targeted` the lines a refund by lines
    names, with (amount, quantity). Goods come first and shipping last: the refund's goods part
    is what it pays back up to the goods still recognised. Named lines give up to their
    remaining goods; whatever is left is spread over all lines in proportion (rule 2's refund by
    amount is the case with no named lines).
    """
    left = dict(remaining)
    goods = min(amount_fen, sum(left.values()))
    taken: dict[int, int] = defaultdict(int)
    quantities: dict[int, int] = defaultdict(int)
    for line_id, (line_amount, quantity) in sorted(targeted.items()):
        share = min(line_amount, left.get(line_id, 0), goods - sum(taken.values()))
        taken[line_id] += share
        left[line_id] = left.get(line_id, 0) - share
        quantities[line_id] += quantity
    for line_id, share in spread(goods - sum(taken.values()), left).items():
        taken[line_id] += share
    line_ids = sorted(set(taken) | set(quantities))
    return [
        RefundShare(line_id, taken[line_id], quantities[line_id])
        for line_id in line_ids
        if taken[line_id] or quantities[line_id]
    ]


def _refund_entry_rows(
    refund: Refund,
    templates: Mapping[int, Mapping[str, Any]],
    remaining: dict[int, int],
    closed: set[str],
    today: date,
) -> list[dict[str, Any]]:
    """The negative entries of one refund; `remaining` is updated for the next refund."""
    targeted = {
        refund_line.order_line_id: (refund_line.amount_fen, refund_line.quantity)
        for refund_line in refund.lines
    }
    if refund.kind == "full":
        targeted = {line_id: (left, 0) for line_id, left in remaining.items()} | {
            line_id: (remaining.get(line_id, 0), quantity)
            for line_id, (_amount, quantity) in targeted.items()
        }
    occurred = refund.succeeded_at or utcnow()
    day = booking_day(shanghai_today(occurred), closed, today)
    rows = []
    for share in allocate_refund(refund.amount_fen, remaining, targeted):
        remaining[share.order_line_id] -= share.amount_fen
        template = templates[share.order_line_id]
        rows.append(
            {
                **template,
                "source": Source.REFUND.value,
                "source_id": refund.id,
                "line_no": share.order_line_id,
                "day": day,
                "occurred_at": occurred,
                "amount_fen": -share.amount_fen,
                "quantity": -share.quantity,
                "created_at": utcnow(),
            }
        )
    return rows


_TEMPLATE_COLUMNS = [c for c in _ENTRY_COLUMNS if c not in ("source", "source_id", "line_no")]


def _templates_and_remaining(
    session: DbSession, order_ids: Iterable[int]
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[int, int]]]:
    """Per order line: its payment entry (the attribution refunds copy) and goods still counted."""
    table = LedgerEntry.__table__
    ids = list(order_ids)
    templates: dict[int, dict[str, Any]] = {}
    remaining: dict[int, dict[int, int]] = defaultdict(dict)
    for row in session.execute(
        select(*[table.c[name] for name in _TEMPLATE_COLUMNS]).where(
            table.c.source == Source.PAYMENT.value, table.c.order_id.in_(ids)
        )
    ).mappings():
        templates[row["order_line_id"]] = dict(row)
        remaining[row["order_id"]][row["order_line_id"]] = row["amount_fen"]
    for order_id, line_id, refunded in session.execute(
        select(table.c.order_id, table.c.order_line_id, func.sum(table.c.amount_fen))
        .where(table.c.source == Source.REFUND.value, table.c.order_id.in_(ids))
        .group_by(table.c.order_id, table.c.order_line_id)
    ):
        remaining[order_id][line_id] += int(refunded)
    return templates, remaining


def recognise_refund(session: DbSession, refund: Refund) -> int:
    """Rule 2: the negative entries of a succeeded refund, dated on the refund day, once.

    The caller holds the order's row lock, so the goods still recognised on each line cannot
    move underneath; a second call finds the refund's entries and writes nothing.
    """
    session.flush()
    if refund.recognised_at is not None or _has_entries(session, Source.REFUND, refund.id):
        return 0
    refund.recognised_at = utcnow()
    if not _has_entries(session, Source.PAYMENT, refund.order_id):
        recognise_order(session, refund.order)
    lock_ledger(session, "ROW EXCLUSIVE")
    templates, remaining = _templates_and_remaining(session, [refund.order_id])
    rows = _refund_entry_rows(
        refund,
        templates,
        remaining[refund.order_id],
        closed_months(session),
        shanghai_today(utcnow()),
    )
    if rows:
        session.execute(_entry_insert(), rows)
    return len(rows)


def _entry_insert() -> Any:
    # The table, not the ORM class: every row carries every column, and the ORM's bulk insert
    # would start a new statement at each change in which of them are empty, a few rows each.
    return insert(cast(Table, LedgerEntry.__table__))


def _has_entries(session: DbSession, source: Source, source_id: int) -> bool:
    return (
        session.scalar(
            select(LedgerEntry.id)
            .where(LedgerEntry.source == source.value, LedgerEntry.source_id == source_id)
            .limit(1)
        )
        is not None
    )


def recognise_unrecognised_refunds(session: DbSession, batch: int = 2000) -> int:
    """Write the entries of every succeeded refund that has none, a batch per transaction."""
    written = 0
    last_id = 0
    while True:
        refunds = session.scalars(
            select(Refund)
            .where(
                Refund.status == "succeeded",
                Refund.id > last_id,
                Refund.recognised_at.is_(None),
            )
            .order_by(Refund.id)
            .limit(batch)
            .options(selectinload(Refund.lines))
        ).all()
        if not refunds:
            return written
        last_id = refunds[-1].id
        order_ids = sorted({r.order_id for r in refunds})
        # The same row locks the webhook path takes, in id order, so the two never interleave.
        session.execute(
            select(Order.id).where(Order.id.in_(order_ids)).order_by(Order.id).with_for_update()
        )
        lock_ledger(session, "ROW EXCLUSIVE")
        # Asked of the ledger's unique key directly: planned as an anti-join, the ledger's
        # statistics (taken before this sweep wrote its first refund entry) made it a scan of
        # every refund entry for every refund of the batch.
        ids = [r.id for r in refunds]
        done = session.scalars(
            select(LedgerEntry.source_id)
            .where(LedgerEntry.source == Source.REFUND.value, LedgerEntry.source_id.in_(ids))
            .distinct()
        )
        fresh = set(ids) - set(done)
        templates, remaining = _templates_and_remaining(session, order_ids)
        closed = closed_months(session)
        today = shanghai_today(utcnow())
        rows: list[dict[str, Any]] = []
        for refund in refunds:
            if refund.id in fresh and remaining.get(refund.order_id):
                rows += _refund_entry_rows(
                    refund, templates, remaining[refund.order_id], closed, today
                )
        if rows:
            session.execute(_entry_insert(), rows)
        session.execute(update(Refund).where(Refund.id.in_(ids)).values(recognised_at=utcnow()))
        session.commit()
        written += len(rows)


def recognise_all(session: DbSession) -> dict[str, int]:
    """The recognise sweep: payments then refunds that have no entries yet. Safe to repeat."""
    payments = recognise_unrecognised_payments(session)
    session.commit()
    analyze_if_grown(session, LedgerEntry.__tablename__, payments)
    session.commit()
    refunds = recognise_unrecognised_refunds(session)
    return {"payment_entries": payments, "refund_entries": refunds}


# --- daily totals -----------------------------------------------------------------------------


# Which order count is exact for a grouping: an order's lines share every dimension but the
# county and the category (and whether they count), so an order is counted once per row when
# its first line of each (county, category), county, category or of the whole order carries it.
ORDER_COUNTS = ("orders", "orders_in_county", "orders_in_category", "orders_overall")


def _order_count_column(group_by: Sequence[str]) -> str:
    by_county, by_category = "county" in group_by, "category" in group_by
    if by_county and by_category:
        return "orders"
    if by_county:
        return "orders_in_county"
    return "orders_in_category" if by_category else "orders_overall"


def _cells(where: ColumnElement[bool] | None = None) -> Select[Any]:
    """The ledger summed into daily-total cells (over the entries `where` selects).

    `where` must keep or drop all entries of a source event together (an id range of whole
    statements, or whole days): the order counts mark one line per order among those selected.
    """
    table = LedgerEntry.__table__
    is_refund = table.c.source == Source.REFUND.value
    event = (table.c.source, table.c.source_id, table.c.counted)

    def first_line(*within: Any) -> Any:
        lowest = func.min(table.c.id).over(partition_by=(*event, *within))
        return case((is_refund, 0), (table.c.id == lowest, 1), else_=0)

    marked = select(
        table.c.day,
        *[table.c[name] for name in DIMENSIONS],
        table.c.counted,
        table.c.amount_fen,
        case((is_refund, 0), else_=1).label("line"),
        first_line(table.c.county, table.c.category).label("orders"),
        first_line(table.c.county).label("orders_in_county"),
        first_line(table.c.category).label("orders_in_category"),
        first_line().label("orders_overall"),
    )
    if where is not None:
        marked = marked.where(where)
    rows = marked.subquery("marked")
    keys = [rows.c.day, *[rows.c[name] for name in DIMENSIONS], rows.c.counted]
    return select(
        *keys,
        func.sum(rows.c.amount_fen).label("amount_fen"),
        func.sum(rows.c.line).label("lines"),
        *[func.sum(rows.c[name]).label(name) for name in ORDER_COUNTS],
    ).group_by(*keys)


def _add_cells(session: DbSession, cells: Select[Any]) -> int:
    """Add the cells to the daily totals; returns how many cells were written."""
    table = DailyTotal.__table__
    sums = ("amount_fen", "lines", *ORDER_COUNTS)
    statement = dialect_insert(session, table).from_select(
        ["day", *DIMENSIONS, "counted", *sums], cells
    )
    statement = statement.on_conflict_do_update(
        index_elements=["day", *DIMENSIONS, "counted"],
        set_={name: table.c[name] + statement.excluded[name] for name in sums},
    )
    result = session.execute(statement.execution_options(preserve_rowcount=True))
    return int(getattr(result, "rowcount", 0) or 0)


def _rollup_cursor(session: DbSession) -> Cursor:
    session.execute(
        dialect_insert(session, Cursor.__table__)
        .values(name=ROLLUP_CURSOR, position=0, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["name"])
    )
    cursor = session.scalar(
        select(Cursor)
        .where(Cursor.name == ROLLUP_CURSOR)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert cursor is not None
    return cursor


def _roll_up(session: DbSession) -> tuple[int, int]:
    """Fold the entries since the cursor; returns (the id span folded, the cells written)."""
    lock_ledger(session, "SHARE")
    cursor = _rollup_cursor(session)
    high = session.scalar(select(func.max(LedgerEntry.id))) or 0
    if high <= cursor.position:
        return 0, 0
    table = LedgerEntry.__table__
    bulk_work_mem(session)
    cells = _add_cells(session, _cells(and_(table.c.id > cursor.position, table.c.id <= high)))
    folded = high - cursor.position
    cursor.position = high
    return folded, cells


def rollup(session: DbSession) -> int:
    """Fold entries written since the last run into the daily totals; returns the id span folded.

    Safe to run concurrently: the cursor row is locked, so a second run waits and then finds
    nothing new.
    """
    folded, cells = _roll_up(session)
    session.commit()
    analyze_if_grown(session, DailyTotal.__tablename__, cells)
    session.commit()
    return folded


def rebuild_rollups(session: DbSession) -> None:
    """Throw the daily totals away and sum them again from the whole ledger."""
    lock_ledger(session, "SHARE")
    cursor = _rollup_cursor(session)
    session.execute(delete(DailyTotal))
    bulk_work_mem(session)
    cells = _add_cells(session, _cells())
    cursor.position = session.scalar(select(func.max(LedgerEntry.id))) or 0
    session.commit()
    analyze_if_grown(session, DailyTotal.__tablename__, cells)
    session.commit()


def _plain(row: Sequence[Any]) -> tuple[Any, ...]:
    # PostgreSQL sums bigints into numerics; the cells compare as plain ints.
    return tuple(int(value) if isinstance(value, Decimal) else value for value in row)


def daily_cells_from_ledger(session: DbSession) -> set[tuple[Any, ...]]:
    """Every daily-total cell computed straight from the ledger, to compare with the table."""
    return {_plain(row) for row in session.execute(_cells())}


def daily_cells_from_table(session: DbSession) -> set[tuple[Any, ...]]:
    table = DailyTotal.__table__
    return {
        _plain(row)
        for row in session.execute(
            select(
                table.c.day,
                *[table.c[name] for name in DIMENSIONS],
                table.c.counted,
                table.c.amount_fen,
                table.c.lines,
                *[table.c[name] for name in ORDER_COUNTS],
            )
        )
    }


# --- totals -----------------------------------------------------------------------------------

# Groups the daily totals don't keep: answered from the ledger itself (slower, just as exact).
LEDGER_GROUPS = ("supplier", "organisation")
GROUPS = (*DIMENSIONS, *LEDGER_GROUPS, "day", "month", "year")


def _by_name(
    session: DbSession,
    where: ColumnElement[bool],
    group_by: Sequence[str],
    counted_only: bool,
) -> Totals:
    """Totals by supplier or organisation, straight from the ledger, orders counted distinct."""
    table = LedgerEntry.__table__
    supplier = Supplier.__table__
    organisation = Organisation.__table__
    columns: dict[str, Any] = {
        "supplier": func.coalesce(supplier.c.name, literal("")),
        "organisation": func.coalesce(organisation.c.name, literal("")),
        "month": month_of(table.c.day),
        "year": year_of(table.c.day),
    }
    keys: list[Any] = [columns[name] if name in columns else table.c[name] for name in group_by]
    labelled = [key.label(name) for key, name in zip(keys, group_by, strict=True)]
    statement = (
        select(
            *labelled,
            func.sum(table.c.amount_fen).label("amount_fen"),
            (
                func.count(
                    func.distinct(case((table.c.source == Source.PAYMENT.value, table.c.source_id)))
                )
                + func.sum(case((table.c.source == Source.OFFLINE.value, 1), else_=0))
            ).label("orders"),
            func.sum(case((table.c.source != Source.REFUND.value, 1), else_=0)).label("lines"),
        )
        .select_from(table)
        .outerjoin(supplier, supplier.c.id == table.c.supplier_id)
        .outerjoin(organisation, organisation.c.id == table.c.organisation_id)
        .where(where)
    )
    if counted_only:
        statement = statement.where(table.c.counted == true())
    if labelled:
        statement = statement.group_by(*keys).order_by(*keys)
    return _totals_of(session, statement)


@dataclass(frozen=True)
class Totals:
    rows: list[dict[str, Any]]
    total_fen: int


def parse_group_by(raw: str | Sequence[str] | None) -> list[str]:
    names = raw.split(",") if isinstance(raw, str) else list(raw or [])
    names = [name.strip() for name in names if name.strip()]
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        raise InvalidInput(
            f"不能按 {', '.join(unknown)} 分组；可用：{', '.join(GROUPS)}。",
            details=[{"field": "group_by", "unknown": unknown, "allowed": list(GROUPS)}],
        )
    return list(dict.fromkeys(names))


def totals(
    session: DbSession,
    *,
    start: date,
    end: date,
    group_by: Sequence[str],
    counted_only: bool = True,
) -> Totals:
    """Counted amounts from `start` to `end` (Shanghai days, both included), grouped.

    Daily totals up to the rollup cursor plus the entries written since, read in one statement
    (one snapshot), so the answer is exact whether or not the rollup has run.
    """
    if end < start:
        raise InvalidInput("结束日期不能早于开始日期。", details=[{"field": "to"}])
    entries = LedgerEntry.__table__
    if any(name in LEDGER_GROUPS for name in group_by):
        return _by_name(session, entries.c.day.between(start, end), group_by, counted_only)
    daily = DailyTotal.__table__
    position = select(Cursor.position).where(Cursor.name == ROLLUP_CURSOR).scalar_subquery()
    recent = _cells(
        and_(entries.c.id > func.coalesce(position, 0), entries.c.day.between(start, end))
    )
    stored = select(
        daily.c.day,
        *[daily.c[name] for name in DIMENSIONS],
        daily.c.counted,
        daily.c.amount_fen,
        daily.c.lines,
        *[daily.c[name] for name in ORDER_COUNTS],
    ).where(daily.c.day.between(start, end))
    return _grouped(session, union_all(stored, recent), group_by, counted_only)


def _grouped(
    session: DbSession, source: Any, group_by: Sequence[str], counted_only: bool
) -> Totals:
    cells = source.subquery("cells")
    keys: list[Any] = []
    for name in group_by:
        if name == "month":
            keys.append(month_of(cells.c.day).label("month"))
        elif name == "year":
            keys.append(year_of(cells.c.day).label("year"))
        else:
            keys.append(cells.c[name].label(name))
    statement = select(
        *keys,
        func.sum(cells.c.amount_fen).label("amount_fen"),
        func.sum(cells.c[_order_count_column(group_by)]).label("orders"),
        func.sum(cells.c.lines).label("lines"),
    )
    if counted_only:
        statement = statement.where(cells.c.counted == true())
    if keys:
        statement = statement.group_by(*keys).order_by(*keys)
    return _totals_of(session, statement)


def _totals_of(session: DbSession, statement: Select[Any]) -> Totals:
    rows = []
    for row in session.execute(statement).mappings():
        item = dict(row)
        if item["amount_fen"] is None:
            continue
        if "day" in item:
            item["day"] = str(item["day"])
        item["amount_fen"] = int(item["amount_fen"])
        item["orders"] = int(item["orders"])
        item["lines"] = int(item["lines"])
        rows.append(item)
    return Totals(rows=rows, total_fen=sum(row["amount_fen"] for row in rows))


def count_orders(session: DbSession, *, start: date, end: date) -> int:
    """Orders (and counter sales) with a counted line booked from `start` to `end`, each once."""
    whole = totals(session, start=start, end=end, group_by=[])
    return whole.rows[0]["orders"] if whole.rows else 0


# --- closing a month --------------------------------------------------------------------------


def parse_month(month: str) -> tuple[date, date]:
    """'YYYY-MM' → its first and last Shanghai day."""
    match = MONTH.match(month)
    if not match:
        raise InvalidInput(f"月份格式应为 YYYY-MM，收到「{month}」。", details=[{"field": "month"}])
    year, number = int(match.group(1)), int(match.group(2))
    first = date(year, number, 1)
    following = date(year + (number == 12), number % 12 + 1, 1)
    return first, date.fromordinal(following.toordinal() - 1)


def _month_figures(session: DbSession, first: date, last: date) -> tuple[int, int]:
    """A month's counted total and its number of entries, counted or not."""
    table = LedgerEntry.__table__
    total, count = session.execute(
        select(
            func.coalesce(func.sum(case((table.c.counted == true(), table.c.amount_fen))), 0),
            func.count(table.c.id),
        ).where(table.c.day.between(first, last))
    ).one()
    return int(total), int(count)


def close_month(
    session: DbSession, month: str, actor: User, now: datetime | None = None
) -> ClosedMonth:
    """Rule 6: finance closes a month that is over. Entries dated in it never change afterwards."""
    first, last = parse_month(month)
    today = shanghai_today(now or utcnow())
    if last >= today:
        raise Conflict(f"{month} 尚未结束，不能结账。", code="month_not_over")
    lock_ledger(session, "SHARE")
    if session.get(ClosedMonth, month) is not None:
        raise Conflict(f"{month} 已经结账。", code="month_closed")
    _roll_up(session)
    total, count = _month_figures(session, first, last)
    closed = ClosedMonth(month=month, closed_by=actor.id, total_fen=total, entries=count)
    session.add(closed)
    try:
        session.flush()
    except IntegrityError:
        # Closed at the same moment by another request or a second copy of the task: both
        # passed the check above before either committed (SHARE does not exclude SHARE).
        session.rollback()
        raise Conflict(f"{month} 已经结账。", code="month_closed") from None
    audit(
        session,
        actor,
        "ledger.close_month",
        month,
        before={"closed": False},
        after={"closed": True, "total_fen": total, "entries": count},
    )
    session.commit()
    return closed


def month_unchanged(session: DbSession, closed: ClosedMonth) -> bool:
    """Whether a closed month still holds exactly what it held when it was closed."""
    first, last = parse_month(closed.month)
    return _month_figures(session, first, last) == (closed.total_fen, closed.entries)
