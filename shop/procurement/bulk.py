"""Reading a buying unit's bulk order file (CSV or .xlsx) and checking it against the catalogue."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date
from operator import attrgetter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from shop.catalog.models import District, Product, Supplier
from shop.db import DbSession
from shop.errors import InvalidInput
from shop.orders.services import PHONE
from shop.spreadsheets import MAX_FILE_BYTES as MAX_FILE_BYTES
from shop.spreadsheets import (
    MAX_ROWS,
    Problem,
    Record,
    cell_text,
    file_error,
    read_records,
)
from shop.spreadsheets import MAX_UNPACKED_BYTES as MAX_UNPACKED_BYTES
from shop.spreadsheets import BulkFileError as BulkFileError

# How far down a title block may push the header row.
HEADER_SEARCH_ROWS = 10
SHOWN_CHARS = 40  # of a cell quoted in a message; SKUs have up to 32
# What an order address holds (order_addresses.name and .detail).
MAX_RECIPIENT_CHARS = 64
MAX_ADDRESS_CHARS = 256

QUANTITY = re.compile(r"[+-]?\d+", re.ASCII)
QUICK_SEPARATOR = re.compile(r"[\s,，]+")

# Each field's Chinese and English header; "中文/English" and "English/中文" are accepted too.
HEADER_NAMES = {
    "sku": ("商品编码", "SKU"),
    "quantity": ("数量", "quantity"),
    "recipient": ("收货人", "recipient"),
    "phone": ("电话", "phone"),
    "address": ("收货地址", "address"),
    "district": ("区县", "district"),
}
REQUIRED_FIELDS = ("sku", "quantity")


def _normalised_header(text: str) -> str:
    # NFKC folds full-width letters, digits, slashes and spaces that Chinese IMEs type.
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def _header_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for name, (chinese, english) in HEADER_NAMES.items():
        for alias in (chinese, english, f"{chinese}/{english}", f"{english}/{chinese}"):
            aliases[_normalised_header(alias)] = name
    return aliases


HEADER_ALIASES = _header_aliases()


@dataclass(frozen=True)
class Columns:
    """Each field's column header as the file spells it, so that a problem points at a cell."""

    sku: str = HEADER_NAMES["sku"][0]
    quantity: str = HEADER_NAMES["quantity"][0]
    recipient: str = HEADER_NAMES["recipient"][0]
    phone: str = HEADER_NAMES["phone"][0]
    address: str = HEADER_NAMES["address"][0]
    district: str = HEADER_NAMES["district"][0]


DEFAULT_COLUMNS = Columns()


@dataclass(frozen=True)
class BulkRow:
    """One data row as read, before any catalogue check.

    `row` is the row number a person sees in Excel or WPS (title and header rows counted).
    """

    row: int
    sku: str
    quantity_text: str
    recipient: str | None = None
    phone: str | None = None
    address: str | None = None
    district: str | None = None
    # Shared by all rows of one file; it only names cells in problems, so it takes no part in ==.
    columns: Columns = field(default=DEFAULT_COLUMNS, compare=False, repr=False)

    @property
    def delivery(self) -> tuple[str | None, str | None, str | None, str | None]:
        return (self.recipient, self.phone, self.address, self.district)


@dataclass(frozen=True)
class PricedLine:
    row: int
    product: Product
    quantity: int
    unit_price_fen: int
    amount_fen: int
    recipient: str | None
    phone: str | None
    address: str | None
    district: str | None


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where each recognised field sits in a row, found from the header row."""

    index: dict[str, int]
    columns: Columns


def read_bulk_file(filename: str, data: bytes) -> list[BulkRow]:
    """Read an uploaded order file into rows, or raise BulkFileError saying why it can't be read.

    The format is told from the content (a zip is .xlsx, anything else must be CSV text), and
    the file's name must agree with it (see shop.spreadsheets).
    """
    records = read_records(filename, data)
    with closing(records):
        return _bulk_rows(filename, records)


def _bulk_rows(filename: str, records: Iterator[Record]) -> list[BulkRow]:
    layout = _find_header(filename, records)
    rows: list[BulkRow] = []
    for number, cells in records:
        row = _bulk_row(number, cells, layout)
        if row is None:
            continue
        if len(rows) == MAX_ROWS:
            raise file_error(
                f"文件 {filename} 超过 {MAX_ROWS} 行订单，请分成几个文件上传。", row=number
            )
        rows.append(row)
    if not rows:
        raise file_error(f"文件 {filename} 只有表头，没有订单行。")
    return rows


def _find_header(filename: str, records: Iterator[Record]) -> Layout:
    """Take the first row near the top that names both a SKU and a quantity column."""
    seen: set[str] = set()
    anything = False
    for number, cells in records:
        texts = [cell_text(cell) for cell in cells]
        anything = anything or any(texts)
        layout = _layout(texts)
        if all(name in layout.index for name in REQUIRED_FIELDS):
            return layout
        seen |= layout.index.keys()
        if number >= HEADER_SEARCH_ROWS:
            break
    if not anything:
        raise file_error(f"文件 {filename} 是空的。")
    if "sku" in seen and "quantity" not in seen:
        raise file_error(f"文件 {filename} 的表头缺少「数量」列。")
    if "quantity" in seen and "sku" not in seen:
        raise file_error(f"文件 {filename} 的表头缺少「商品编码」（SKU）列。")
    raise file_error(
        f"文件 {filename} 的前 {HEADER_SEARCH_ROWS} 行中找不到同时含「商品编码」和「数量」的"
        "表头行，请使用下载的模板。"
    )


def _layout(texts: Sequence[str]) -> Layout:
    index: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for position, text in enumerate(texts):
        name = HEADER_ALIASES.get(_normalised_header(text))
        if name is not None and name not in index:  # the first of two same-named columns wins
            index[name] = position
            spelled[name] = text
    return Layout(index=index, columns=Columns(**spelled))


def _bulk_row(number: int, cells: Sequence[Any], layout: Layout) -> BulkRow | None:
    """The row's recognised cells, or None when all of them are blank (notes-only rows too)."""
    texts = {
        name: cell_text(cells[position]) if position < len(cells) else ""
        for name, position in layout.index.items()
    }
    if not any(texts.values()):
        return None
    return BulkRow(
        row=number,
        sku=texts["sku"],
        quantity_text=texts["quantity"],
        recipient=texts.get("recipient") or None,
        phone=texts.get("phone") or None,
        address=texts.get("address") or None,
        district=texts.get("district") or None,
        columns=layout.columns,
    )


def parse_quick_order(text: str) -> list[BulkRow]:
    """Pasted lines of "SKU quantity" (space, tab, comma or "，" between); row = line number.

    A line that is not two fields still becomes a row, so that the check reports it with the
    others; a pasted header line ("SKU 数量") is skipped.
    """
    rows: list[BulkRow] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = QUICK_SEPARATOR.split(line.strip(), maxsplit=1)
        if not fields[0] or _is_header(fields):
            continue
        if len(rows) == MAX_ROWS:
            raise file_error(f"一次最多粘贴 {MAX_ROWS} 行，请分几次下单。", row=number)
        rows.append(BulkRow(number, fields[0], fields[1] if len(fields) > 1 else ""))
    if not rows:
        raise file_error("没有粘贴任何商品。")
    return rows


def _is_header(fields: Sequence[str]) -> bool:
    names = [HEADER_ALIASES.get(_normalised_header(text)) for text in fields]
    return names == list(REQUIRED_FIELDS)


# --- checking and pricing --------------------------------------------------------------------


def tier_price(product: Product, quantity: int) -> int:
    """The unit price for `quantity`: the highest tier reached, else the list price."""
    reached = [tier for tier in product.tiers if tier.min_quantity <= quantity]
    if not reached:
        return product.price_fen
    return max(reached, key=attrgetter("min_quantity")).price_fen


def check_bulk_rows(session: DbSession, rows: list[BulkRow], *, today: date) -> list[PricedLine]:
    """Check every row against the catalogue and price it, or refuse the whole file.

    All problems of all rows are reported at once (InvalidInput, code "invalid_rows"); nothing
    is half-accepted. Stock and tier prices go by the file's total of each SKU over all its
    rows: a unit negotiates the price for its whole order, however many canteens it ships to,
    so 30 boxes to one address and 30 to another reach a "≥ 50" tier. The minimum and the
    increment apply to each line, because each line is packed and shipped on its own.
    """
    if not rows:
        raise InvalidInput(
            "没有任何订单行。",
            code="invalid_rows",
            details=[Problem(None, None, "没有任何订单行。").as_detail()],
        )
    products = _products_by_sku(session, {row.sku for row in rows if row.sku})
    districts = set(session.scalars(select(District.name)))
    quantities = [_quantity(row.quantity_text) for row in rows]
    totals: Counter[str] = Counter()
    for row, quantity in zip(rows, quantities, strict=True):
        if quantity is not None and quantity > 0:
            totals[row.sku] += quantity
    problems: list[Problem] = []
    first_row_of_line: dict[tuple[str, tuple[str | None, ...]], int] = {}
    for row, quantity in zip(rows, quantities, strict=True):
        product = products.get(row.sku)
        problems += _sku_problems(row, product, today)
        problems += _quantity_problems(row, quantity, product, totals[row.sku])
        problems += _delivery_problems(row, districts)
        earlier = first_row_of_line.setdefault((row.sku, row.delivery), row.row)
        if earlier != row.row:
            problems.append(
                _problem(
                    row,
                    row.columns.sku,
                    f"与第 {earlier} 行重复（同一商品、同一收货信息），请合并为一行。",
                )
            )
    if problems:
        bad_rows = len({problem.row for problem in problems})
        raise InvalidInput(
            f"共有 {bad_rows} 行有误，没有创建任何订单，请改正后重新提交。",
            code="invalid_rows",
            details=[problem.as_detail() for problem in problems],
        )
    return [
        _priced_line(row, quantity, products[row.sku], totals[row.sku])
        for row, quantity in zip(rows, quantities, strict=True)
        if quantity is not None  # always, once no row has a problem; this tells the type checker
    ]


def _products_by_sku(session: DbSession, skus: set[str]) -> dict[str, Product]:
    """Active products for all SKUs in one query, with what pricing and order lines read."""
    found = session.scalars(
        select(Product)
        .where(Product.sku.in_(skus), Product.active)
        .options(
            joinedload(Product.supplier).joinedload(Supplier.county),
            joinedload(Product.supplier).selectinload(Supplier.certifications),
            selectinload(Product.tiers),
        )
    )
    return {product.sku: product for product in found}


def _quantity(text: str) -> int | None:
    """The whole number in a quantity cell, or None; full-width digits are read as digits."""
    text = unicodedata.normalize("NFKC", text).strip()
    if not QUANTITY.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than Python converts: no one orders that many
        return None


def _problem(row: BulkRow, column: str, message: str) -> Problem:
    return Problem(row.row, column, f"第 {row.row} 行：{message}")


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _sku_problems(row: BulkRow, product: Product | None, today: date) -> list[Problem]:
    if not row.sku:
        return [_problem(row, row.columns.sku, "商品编码为空。")]
    if product is None:
        return [_problem(row, row.columns.sku, f"没有编码为「{_shown(row.sku)}」的在售商品。")]
    if not product.in_season(today):
        return [
            _problem(
                row,
                row.columns.sku,
                f"{product.name}（{product.sku}）不在销售季"
                f"（{product.season_from} 至 {product.season_to}）。",
            )
        ]
    return []


def _quantity_problems(
    row: BulkRow, quantity: int | None, product: Product | None, total: int
) -> list[Problem]:
    column = row.columns.quantity
    if not row.quantity_text:
        return [_problem(row, column, "数量为空。")]
    if quantity is None:
        return [_problem(row, column, f"数量「{_shown(row.quantity_text)}」不是整数。")]
    if quantity <= 0:
        return [_problem(row, column, f"数量必须大于 0，填写的是 {quantity}。")]
    if product is None:
        return []
    problems: list[Problem] = []
    if quantity < product.min_order_quantity:
        problems.append(
            _problem(
                row,
                column,
                f"{product.name}（{product.sku}）最少订 {product.min_order_quantity}，"
                f"填写的是 {quantity}。",
            )
        )
    if quantity % product.quantity_increment:
        problems.append(
            _problem(row, column, f"数量 {quantity} 不是 {product.quantity_increment} 的整数倍。")
        )
    if total > product.stock:
        problems.append(
            _problem(
                row,
                column,
                f"{product.name}（{product.sku}）库存不足：文件中共订 {total}，"
                f"现有库存 {product.stock}。",
            )
        )
    return problems


def _delivery_problems(row: BulkRow, districts: set[str]) -> list[Problem]:
    columns = row.columns
    problems: list[Problem] = []
    if any(row.delivery):
        required = (
            (row.recipient, columns.recipient),
            (row.phone, columns.phone),
            (row.address, columns.address),
        )
        problems += [
            _problem(
                row,
                column,
                f"填写收货信息时，{columns.recipient}、{columns.phone}和{columns.address}"
                f"须一并填写，此行缺少{column}。",
            )
            for value, column in required
            if not value
        ]
    problems += [
        _problem(row, column, f"{column}超过 {limit} 个字，请缩短。")
        for value, column, limit in (
            (row.recipient, columns.recipient, MAX_RECIPIENT_CHARS),
            (row.address, columns.address, MAX_ADDRESS_CHARS),
        )
        if value and len(value) > limit
    ]
    if row.phone and not PHONE.match(row.phone):
        problems.append(
            _problem(
                row, columns.phone, f"电话「{_shown(row.phone)}」不是有效的手机或固定电话号码。"
            )
        )
    if row.district and row.district not in districts:
        problems.append(
            _problem(row, columns.district, f"惠州市没有名为「{_shown(row.district)}」的区县。")
        )
    return problems


def _priced_line(row: BulkRow, quantity: int, product: Product, total: int) -> PricedLine:
    unit_price_fen = tier_price(product, total)
    return PricedLine(
        row=row.row,
        product=product,
        quantity=quantity,
        unit_price_fen=unit_price_fen,
        amount_fen=unit_price_fen * quantity,
        recipient=row.recipient,
        phone=row.phone,
        address=row.address,
        district=row.district,
    )
