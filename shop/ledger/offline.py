"""Counter sales (消费帮扶专柜) imported from CSV or xlsx as `offline` ledger entries.

A file is read by shop.spreadsheets (encodings, xlsx, limits, as bulk orders are), every row is
checked against the catalogue, and only a file without a single bad row is written: its import, one
counter sale per row and one ledger entry per sale, in one transaction. The file's SHA-256 is
unique, so the same file imported again writes nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from shop.accounts.models import User
from shop.accounts.services import audit
from shop.catalog.models import Category, County, District, Product, Supplier
from shop.db import DbSession, utcnow
from shop.errors import InvalidInput, ServiceUnavailable
from shop.ledger.models import (
    INDIVIDUAL,
    Kind,
    LedgerEntry,
    NotCounted,
    OfflineImport,
    OfflineSale,
    Source,
)
from shop.ledger.services import booking_day, closed_months
from shop.ledger.sql import lock_ledger
from shop.orders.models import Channel, Funding
from shop.procurement.bulk import HEADER_SEARCH_ROWS, _normalised_header, _quantity, _shown
from shop.spreadsheets import (
    MAX_ROWS,
    ZIP_MAGIC,
    BulkFileError,
    Problem,
    Record,
    cell_text,
    read_records,
)
from shop.timezones import SHANGHAI, shanghai_today

# Each field's Chinese and English headers; "中文/English" and "English/中文" are accepted too.
HEADER_NAMES: dict[str, tuple[tuple[str, ...], str]] = {
    "date": (("日期", "销售日期"), "date"),
    "sku": (("商品编码", "SKU"), "sku"),
    "county": (("产地县", "产地"), "county"),
    "category": (("品类", "类别"), "category"),
    "amount": (("金额", "销售金额", "金额(元)"), "amount"),
    "quantity": (("数量",), "quantity"),
    "counter": (("柜台", "专柜"), "counter"),
    "district": (("区县", "柜台区县"), "district"),
    "certified": (("认定产品",), "certified"),
}
REQUIRED_FIELDS = ("date", "amount", "quantity", "counter", "district")
# A counter sells a SKU, or a county's produce of a category when it has no SKU.
WITHOUT_SKU = ("county", "category")

DATE = re.compile(
    r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
    r"(?:[ T]\d{1,2}:\d{2}(?::\d{2})?)?",
    re.ASCII,
)
COMPACT_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
YES = frozenset({"是", "yes", "y", "true", "1", "认定"})
NO = frozenset({"否", "no", "n", "false", "0", ""})
# Far beyond any counter's day; it keeps a typo from reaching the totals (and a bigint).
MAX_AMOUNT_FEN = 100_000_000 * 100
MAX_QUANTITY = 1_000_000
MAX_COUNTER_CHARS = 64
REFERENCE = "OFF-{import_id}-{row}"
# How long a page or API call waits for the import task; a 10,000-row file takes seconds.
IMPORT_WAIT_SECONDS = 120

# Records a problem with the named field of the row being checked.
Refuse = Callable[[str, str], None]


def _header_aliases() -> dict[str, str]:
    aliases: dict[str, str] = {}
    for name, (chinese_names, english) in HEADER_NAMES.items():
        for chinese in chinese_names:
            for alias in (chinese, english, f"{chinese}/{english}", f"{english}/{chinese}"):
                aliases[_normalised_header(alias)] = name
    return aliases


HEADER_ALIASES = _header_aliases()


@dataclass(frozen=True)
class SaleRow:
    """One data row as read; `row` is the number Excel shows. `headers` names each column."""

    row: int
    cells: dict[str, Any]
    headers: dict[str, str]

    def text(self, name: str) -> str:
        return cell_text(self.cells.get(name))

    def column(self, name: str) -> str:
        return self.headers.get(name, HEADER_NAMES[name][0][0])


@dataclass(frozen=True)
class CheckedSale:
    """A row that passed every check, with what its sale and ledger entry need."""

    row: int
    sold_on: date
    product: Product | None
    county: County
    category: str
    amount_fen: int
    quantity: int
    counter: str
    district: District
    certified: bool

    @property
    def counted(self) -> bool:
        return self.certified and self.county.cooperation

    @property
    def reason(self) -> str:
        if not self.certified:
            return (NotCounted.UNCERTIFIED if self.product else NotCounted.NOT_DECLARED).value
        if not self.county.cooperation:
            return NotCounted.NOT_COOPERATION.value
        return ""


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def find_import(session: DbSession, data: bytes) -> OfflineImport | None:
    """The earlier import of this very file, if any."""
    return session.scalar(select(OfflineImport).where(OfflineImport.sha256 == file_sha256(data)))


# --- reading ---------------------------------------------------------------------------------


def read_sale_rows(filename: str, data: bytes) -> list[SaleRow]:
    """The file's data rows, or BulkFileError when the file or its header cannot be read."""
    records = read_records(filename, data)
    with closing(records):
        headers, index = _find_header(filename, records)
        rows: list[SaleRow] = []
        for number, cells in records:
            values = {
                name: cells[position] if position < len(cells) else None
                for name, position in index.items()
            }
            if not any(cell_text(value) for value in values.values()):
                continue
            if len(rows) == MAX_ROWS:
                raise BulkFileError(
                    [
                        Problem(
                            number,
                            None,
                            f"文件 {filename} 超过 {MAX_ROWS} 行销售记录，请分成几个文件导入。",
                        )
                    ]
                )
            rows.append(SaleRow(number, values, headers))
    if not rows:
        raise BulkFileError([Problem(None, None, f"文件 {filename} 只有表头，没有销售记录。")])
    return rows


def _find_header(filename: str, records: Iterator[Record]) -> tuple[dict[str, str], dict[str, int]]:
    """The first row near the top that names a date and an amount column, and its columns."""
    for number, cells in records:
        index: dict[str, int] = {}
        headers: dict[str, str] = {}
        for position, cell in enumerate(cells):
            text = cell_text(cell)
            name = HEADER_ALIASES.get(_normalised_header(text))
            if name is not None and name not in index:  # the first of two same-named wins
                index[name] = position
                headers[name] = text
        if "date" in index and "amount" in index:
            missing = [HEADER_NAMES[name][0][0] for name in REQUIRED_FIELDS if name not in index]
            if "sku" not in index:
                missing += [HEADER_NAMES[name][0][0] for name in WITHOUT_SKU if name not in index]
            if missing:
                raise BulkFileError(
                    [
                        Problem(
                            number,
                            None,
                            f"文件 {filename} 的表头缺少「{'」「'.join(missing)}」列"
                            "（没有商品编码列时须有产地县和品类列），请使用下载的模板。",
                        )
                    ]
                )
            return headers, index
        if number >= HEADER_SEARCH_ROWS:
            break
    raise BulkFileError(
        [
            Problem(
                None,
                None,
                f"文件 {filename} 的前 {HEADER_SEARCH_ROWS} 行中找不到含「日期」和「金额」的"
                "表头行，请使用下载的模板。",
            )
        ]
    )


# --- checking --------------------------------------------------------------------------------


@dataclass
class _Catalogue:
    products: dict[str, Product]
    counties: dict[str, County]
    districts: dict[str, District]


def _catalogue(session: DbSession, rows: Sequence[SaleRow]) -> _Catalogue:
    skus = {row.text("sku") for row in rows if row.text("sku")}
    products = session.scalars(
        select(Product)
        .where(Product.sku.in_(skus))
        .options(
            joinedload(Product.supplier).joinedload(Supplier.county),
            joinedload(Product.supplier).selectinload(Supplier.certifications),
        )
    )
    counties: dict[str, County] = {}
    for county in session.scalars(select(County)):
        for key in (county.name, county.code, county.name_en):
            counties[_key(key)] = county
    districts: dict[str, District] = {}
    for district in session.scalars(select(District)):
        for key in (district.name, district.code, district.name_en):
            districts[_key(key)] = district
    return _Catalogue({p.sku: p for p in products}, counties, districts)


def _key(text: str) -> str:
    # Names are matched as headers are: full-width folded, case and spaces ignored.
    return _normalised_header(text)


def check_sale_rows(
    session: DbSession, rows: Sequence[SaleRow], *, today: date
) -> list[CheckedSale]:
    """Check every row, or refuse the whole file listing every problem (InvalidInput)."""
    catalogue = _catalogue(session, rows)
    problems: list[Problem] = []
    checked: list[CheckedSale] = []
    first_row: dict[tuple[Any, ...], int] = {}
    for row in rows:
        sale, row_problems = _check_row(row, catalogue, today)
        problems += row_problems
        if sale is None:
            continue
        key = (
            sale.sold_on,
            sale.product.id if sale.product else None,
            sale.county.id,
            sale.category,
            sale.amount_fen,
            sale.quantity,
            _key(sale.counter),
            sale.district.id,
            sale.certified,
        )
        earlier = first_row.setdefault(key, row.row)
        if earlier != row.row:
            problems.append(
                _problem(
                    row,
                    "amount",
                    f"与第 {earlier} 行重复（同一日期、商品、金额、数量、柜台），"
                    "请删除重复的一行或合并为一行。",
                )
            )
            continue
        checked.append(sale)
    if problems:
        bad_rows = len({problem.row for problem in problems})
        raise InvalidInput(
            f"共有 {bad_rows} 行有误，没有导入任何记录，请改正后重新导入。",
            code="invalid_rows",
            details=[problem.as_detail() for problem in problems],
        )
    return checked


def _problem(row: SaleRow, name: str, message: str) -> Problem:
    return Problem(row.row, row.column(name), f"第 {row.row} 行：{message}")


def _check_row(
    row: SaleRow, catalogue: _Catalogue, today: date
) -> tuple[CheckedSale | None, list[Problem]]:
    problems: list[Problem] = []

    def refuse(name: str, message: str) -> None:
        problems.append(_problem(row, name, message))

    sold_on = _sale_date(row, today, refuse)
    product, county, category = _what_was_sold(row, catalogue, refuse)
    amount_fen = _amount(row, refuse)
    quantity = _sale_quantity(row, refuse)
    counter = unicodedata.normalize("NFKC", row.text("counter")).strip()
    if not counter:
        refuse("counter", "柜台为空。")
    elif len(counter) > MAX_COUNTER_CHARS:
        refuse("counter", f"柜台名称超过 {MAX_COUNTER_CHARS} 个字。")
    district_text = row.text("district")
    district = catalogue.districts.get(_key(district_text))
    if not district_text:
        refuse("district", "区县为空。")
    elif district is None:
        refuse("district", f"惠州市没有名为「{_shown(district_text)}」的区县。")
    declared = _declared_certified(row, refuse)
    if problems:
        return None, problems
    assert sold_on and county and category and amount_fen and quantity and district
    certified = product.certified_on(sold_on) if product is not None else declared
    return (
        CheckedSale(
            row=row.row,
            sold_on=sold_on,
            product=product,
            county=county,
            category=category,
            amount_fen=amount_fen,
            quantity=quantity,
            counter=counter,
            district=district,
            certified=certified,
        ),
        [],
    )


def _sale_date(row: SaleRow, today: date, refuse: Refuse) -> date | None:
    value = row.cells.get("date")
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        text = unicodedata.normalize("NFKC", cell_text(value)).strip()
        if not text:
            refuse("date", "日期为空。")
            return None
        match = DATE.fullmatch(text) or COMPACT_DATE.fullmatch(text)
        try:
            if match is None:
                raise ValueError(text)
            day = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            refuse("date", f"日期「{_shown(text)}」无法识别，请写成 2025-03-01 这样的格式。")
            return None
    if day > today:
        refuse("date", f"日期 {day} 晚于今天（{today}），不能导入尚未发生的销售。")
        return None
    return day


def _what_was_sold(
    row: SaleRow, catalogue: _Catalogue, refuse: Refuse
) -> tuple[Product | None, County | None, str | None]:
    """The SKU's product, county and category; or the county and category the row names."""
    sku = row.text("sku")
    county_text = row.text("county")
    category_text = row.text("category")
    county = catalogue.counties.get(_key(county_text)) if county_text else None
    category = _category(category_text) if category_text else None
    if sku:
        product = catalogue.products.get(sku)
        if product is None:
            refuse("sku", f"没有编码为「{_shown(sku)}」的商品。")
            return None, None, None
        if county_text and (county is None or county.id != product.county.id):
            refuse(
                "county",
                f"产地县「{_shown(county_text)}」与商品 {product.sku} 的产地 "
                f"{product.county.name} 不一致（填写商品编码时产地县可留空）。",
            )
        if category_text and category != product.category:
            refuse(
                "category",
                f"品类「{_shown(category_text)}」与商品 {product.sku} 的品类 "
                f"{product.category} 不一致（填写商品编码时品类可留空）。",
            )
        return product, product.county, product.category
    if not county_text:
        refuse("county", "没有商品编码时，须填写产地县。")
    elif county is None:
        refuse("county", f"黔西南州没有名为「{_shown(county_text)}」的县市。")
    if not category_text:
        refuse("category", "没有商品编码时，须填写品类。")
    elif category is None:
        refuse(
            "category",
            f"品类「{_shown(category_text)}」无法识别，可填："
            f"{'、'.join(c.value for c in Category)}。",
        )
    return None, county, category


def _category(text: str) -> str | None:
    parsed = Category.parse(text.strip()) or Category.parse(_key(text))
    return parsed.value if parsed else None


def _amount(row: SaleRow, refuse: Refuse) -> int | None:
    """元 with at most two decimals, as whole fen; read as a decimal, never a float."""
    raw = row.text("amount")
    text = unicodedata.normalize("NFKC", raw).replace(",", "").strip()
    text = text.removeprefix("¥").removesuffix("元").strip()
    if not text:
        refuse("amount", "金额为空。")
        return None
    try:
        amount = Decimal(text)
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite():
        refuse("amount", f"金额「{_shown(raw)}」不是数字。")
        return None
    if _decimal_places(amount) > 2:
        refuse("amount", f"金额「{_shown(raw)}」超过两位小数（以元为单位，精确到分）。")
        return None
    if amount <= 0:
        refuse("amount", f"金额必须大于 0，填写的是 {_shown(raw)}。")
        return None
    # Compared, not multiplied: 1e999999999 × 100 would overflow the decimal context.
    if amount > Decimal(MAX_AMOUNT_FEN).scaleb(-2):
        refuse("amount", f"金额 {_shown(raw)} 元超过单行上限 {MAX_AMOUNT_FEN // 100} 元。")
        return None
    return int(amount.scaleb(2))


def _decimal_places(amount: Decimal) -> int:
    """Places after the point once trailing zeros are dropped (1.50 has 1), worked out exactly.

    Decimal.normalize() would round to the context: 1e-999999999 became 0 and passed as 0 fen.
    """
    _sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # the amount is finite
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing_zeros))


def _sale_quantity(row: SaleRow, refuse: Refuse) -> int | None:
    text = row.text("quantity")
    if not text:
        refuse("quantity", "数量为空。")
        return None
    quantity = _quantity(text)
    if quantity is None:
        refuse("quantity", f"数量「{_shown(text)}」不是整数。")
        return None
    if quantity <= 0:
        refuse("quantity", f"数量必须大于 0，填写的是 {quantity}。")
        return None
    if quantity > MAX_QUANTITY:
        refuse("quantity", f"数量 {quantity} 超过单行上限 {MAX_QUANTITY}。")
        return None
    return quantity


def _declared_certified(row: SaleRow, refuse: Refuse) -> bool:
    """The 认定产品 cell of a row without SKU; with a SKU the catalogue says (and it is ignored)."""
    text = _normalised_header(row.text("certified"))
    if text in YES:
        return True
    if text not in NO and not row.text("sku"):
        refuse(
            "certified",
            f"认定产品应填「是」或「否」，填写的是「{_shown(row.text('certified'))}」。",
        )
    return False


def check_offline_file(
    session: DbSession, data: bytes, filename: str, *, today: date
) -> list[CheckedSale]:
    """Read and check a counter-sales file without writing anything.

    An unreadable file raises BulkFileError (code invalid_file), bad rows InvalidInput (code
    invalid_rows); both list every problem in their details.
    """
    return check_sale_rows(session, read_sale_rows(filename, data), today=today)


# --- writing ---------------------------------------------------------------------------------


def _noon_in_shanghai(day: date) -> datetime:
    return datetime.combine(day, time(12), tzinfo=SHANGHAI).astimezone(UTC)


def import_offline_sales(
    session: DbSession, data: bytes, filename: str, actor: User | None
) -> tuple[OfflineImport, bool]:
    """Import a counter-sales file once: (the import, True), or (the earlier one, False).

    One transaction for the whole file: a bad row anywhere writes nothing (InvalidInput with
    every problem). Each sale is booked on its day, or today when that month is closed.
    """
    filename = filename[:255]
    earlier = find_import(session, data)
    if earlier is not None:
        session.rollback()
        return earlier, False
    now = utcnow()
    today = shanghai_today(now)
    sales = check_offline_file(session, data, filename, today=today)
    lock_ledger(session, "ROW EXCLUSIVE")
    closed = closed_months(session)
    batch = OfflineImport(
        sha256=file_sha256(data),
        filename=filename,
        rows=len(sales),
        total_fen=sum(sale.amount_fen for sale in sales),
        imported_by=actor.id if actor else None,
        imported_at=now,
    )
    session.add(batch)
    try:
        session.flush()
    except IntegrityError:
        # The same file, imported at the same moment by someone else, committed first.
        session.rollback()
        earlier = find_import(session, data)
        if earlier is None:
            raise
        return earlier, False
    # render_nulls: one batched statement each; otherwise the ORM splits the rows into a
    # statement per run of rows with the same columns left empty (with a SKU or without).
    sale_ids = session.scalars(
        insert(OfflineSale)
        .returning(OfflineSale.id, sort_by_parameter_order=True)
        .execution_options(render_nulls=True),
        [
            {
                "import_id": batch.id,
                "row_no": sale.row,
                "sold_on": sale.sold_on,
                "product_id": sale.product.id if sale.product else None,
                "county_id": sale.county.id,
                "category": sale.category,
                "amount_fen": sale.amount_fen,
                "quantity": sale.quantity,
                "counter": sale.counter,
                "district_id": sale.district.id,
                "certified": sale.certified,
            }
            for sale in sales
        ],
    ).all()
    session.execute(
        insert(LedgerEntry).execution_options(render_nulls=True),
        [
            _entry(batch.id, sale_id, sale, booking_day(sale.sold_on, closed, today), now)
            for sale_id, sale in zip(sale_ids, sales, strict=True)
        ],
    )
    audit(
        session,
        actor,
        "ledger.import_offline",
        f"offline_import:{batch.id}",
        after={
            "filename": filename,
            "sha256": batch.sha256,
            "rows": batch.rows,
            "total_fen": batch.total_fen,
        },
    )
    session.commit()
    return batch, True


def _entry(
    import_id: int, sale_id: int, sale: CheckedSale, day: date, now: datetime
) -> dict[str, Any]:
    return {
        "source": Source.OFFLINE.value,
        "source_id": sale_id,
        "line_no": 0,
        "day": day,
        "occurred_at": _noon_in_shanghai(sale.sold_on),
        "reference": REFERENCE.format(import_id=import_id, row=sale.row),
        "order_id": None,
        "order_line_id": None,
        "amount_fen": sale.amount_fen,
        "quantity": sale.quantity,
        "county_id": sale.county.id,
        "county": sale.county.name,
        "district": sale.district.name,
        "buyer_type": INDIVIDUAL,
        "kind": Kind.PURCHASE.value,
        "channel": Channel.OFFLINE.value,
        "funding": Funding.PERSONAL.value,
        "category": sale.category,
        "sku": sale.product.sku if sale.product else None,
        "supplier_id": sale.product.supplier_id if sale.product else None,
        "organisation_id": None,
        "counted": sale.counted,
        "reason": sale.reason,
        "created_at": now,
    }


# --- uploads from the page and the API ------------------------------------------------------


def store_upload(upload_dir: Path, data: bytes) -> Path:
    """Keep an uploaded file where every worker can read it, named by its content."""
    folder = upload_dir / "offline-sales"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".xlsx" if data.startswith(ZIP_MAGIC) else ".csv"
    path = folder / f"{file_sha256(data)}{suffix}"
    if not path.exists():
        # Written aside and renamed, so a worker never reads half a file.
        partial = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}"
        partial.write_bytes(data)
        os.replace(partial, path)
    return path


def import_upload(
    session: DbSession, data: bytes, filename: str, actor: User, upload_dir: Path
) -> tuple[OfflineImport, bool]:
    """Import a file a person uploaded: checked here, written by the import task.

    Checking in the request reports every bad row to the person with its details, which an
    exception from a worker would not carry back; the task checks again before it writes.
    """
    from workers.tasks import import_offline_sales as import_task

    actor_id = actor.id  # read now: after the rollback below it would be loaded again
    earlier = find_import(session, data)
    if earlier is None:
        check_offline_file(session, data, filename, today=shanghai_today(utcnow()))
    # Ends the read transaction: on SQLite it holds the write lock the task needs. Nothing in
    # this session may start another one until the task is done.
    session.rollback()
    if earlier is not None:
        return earlier, False
    conf = import_task.app.conf
    if not conf.task_always_eager and not conf.result_backend:
        # Without a result backend nobody could wait for the task: import in this request.
        return import_offline_sales(session, data, filename, session.get(User, actor_id))
    path = store_upload(upload_dir, data)
    try:
        result = import_task.delay(str(path), filename, actor_id).get(timeout=IMPORT_WAIT_SECONDS)
    except CeleryTimeout as exc:
        raise ServiceUnavailable(
            "文件已收到，导入仍在进行中，请稍后刷新导入记录查看结果。", code="import_pending"
        ) from exc
    batch = session.get(OfflineImport, result["import_id"])
    assert batch is not None
    return batch, bool(result["created"])


# --- reading imports back ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSummary:
    batch: OfflineImport
    counted_fen: int
    imported_by: str | None


def recent_imports(session: DbSession, limit: int = 200) -> list[ImportSummary]:
    """The latest imports, newest first, with what of each counts toward the totals."""
    batches = session.scalars(
        select(OfflineImport).order_by(OfflineImport.id.desc()).limit(limit)
    ).all()
    ids = [b.id for b in batches]
    counted = dict(
        session.execute(
            select(OfflineSale.import_id, func.sum(LedgerEntry.amount_fen))
            .join(
                LedgerEntry,
                (LedgerEntry.source == Source.OFFLINE.value)
                & (LedgerEntry.source_id == OfflineSale.id),
            )
            .where(OfflineSale.import_id.in_(ids), LedgerEntry.counted.is_(True))
            .group_by(OfflineSale.import_id)
        ).all()
    )
    people = dict(
        session.execute(
            select(User.id, User.email).where(
                User.id.in_({b.imported_by for b in batches if b.imported_by})
            )
        ).all()
    )
    return [
        ImportSummary(
            batch=b,
            counted_fen=int(counted.get(b.id) or 0),
            imported_by=people.get(b.imported_by) if b.imported_by else None,
        )
        for b in batches
    ]
