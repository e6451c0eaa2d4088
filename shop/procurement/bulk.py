"""Reading a buying unit's bulk order file (CSV or .xlsx) and checking it against the catalogue."""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date
from operator import attrgetter
from typing import Any

import openpyxl
from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from shop.catalog.models import District, Product, Supplier
from shop.db import DbSession
from shop.errors import InvalidInput
from shop.orders.services import PHONE

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_ROWS = 10_000
# A 10,000-row order unpacks to a few MB of XML; far more is a zip bomb, not an order. openpyxl
# holds the shared strings in memory, so this also bounds what a file can make us allocate.
MAX_UNPACKED_BYTES = 50 * 1024 * 1024
# How far down a title block may push the header row.
HEADER_SEARCH_ROWS = 10
ENCODINGS = ("utf-8-sig", "gb18030")
DECODE_CHUNK_BYTES = 64 * 1024
SNIFF_CHARS = 16 * 1024
SHOWN_CHARS = 40  # of a cell quoted in a message; SKUs have up to 32

ZIP_MAGIC = b"PK\x03\x04"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # the pre-2007 .xls (and .doc) container
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
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
class Problem:
    row: int | None
    column: str | None
    message: str

    def as_detail(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "message": self.message}


class BulkFileError(InvalidInput):
    """The file as a whole cannot be read; nothing in it was looked at row by row."""

    code = "invalid_file"

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(problems[0].message, details=[p.as_detail() for p in problems])
        self.problems = problems


def _file_error(message: str, row: int | None = None) -> BulkFileError:
    return BulkFileError([Problem(row, None, message)])


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

Record = tuple[int, Sequence[Any]]
Records = Generator[Record, None, None]


@dataclass(frozen=True)
class Layout:
    """Where each recognised field sits in a row, found from the header row."""

    index: dict[str, int]
    columns: Columns


def read_bulk_file(filename: str, data: bytes) -> list[BulkRow]:
    """Read an uploaded order file into rows, or raise BulkFileError saying why it can't be read.

    The format is told from the content (a zip is .xlsx, anything else must be CSV text);
    `filename` only makes messages clearer.
    """
    records = read_records(filename, data)
    with closing(records):
        return _bulk_rows(filename, records)


def read_records(filename: str, data: bytes) -> Records:
    """The rows of an uploaded CSV or .xlsx file, numbered as Excel numbers them.

    An empty or oversized file is refused at once, one in neither format as its rows are read
    (BulkFileError either way). Counter-sales files are read through this too.
    """
    if not data:
        raise _file_error(f"文件 {filename} 是空的。")
    if len(data) > MAX_FILE_BYTES:
        raise _file_error(
            f"文件 {filename} 有 {len(data) / 1024 / 1024:.1f} MB，"
            f"超过了 {MAX_FILE_BYTES // 1024 // 1024} MB 的上限，请分成几个文件上传。"
        )
    return (
        _xlsx_records(filename, data)
        if data.startswith(ZIP_MAGIC)
        else _csv_records(filename, data)
    )


def _bulk_rows(filename: str, records: Iterator[Record]) -> list[BulkRow]:
    layout = _find_header(filename, records)
    rows: list[BulkRow] = []
    for number, cells in records:
        row = _bulk_row(number, cells, layout)
        if row is None:
            continue
        if len(rows) == MAX_ROWS:
            raise _file_error(
                f"文件 {filename} 超过 {MAX_ROWS} 行订单，请分成几个文件上传。", row=number
            )
        rows.append(row)
    if not rows:
        raise _file_error(f"文件 {filename} 只有表头，没有订单行。")
    return rows


def _find_header(filename: str, records: Iterator[Record]) -> Layout:
    """Take the first row near the top that names both a SKU and a quantity column."""
    seen: set[str] = set()
    anything = False
    for number, cells in records:
        texts = [_cell_text(cell) for cell in cells]
        anything = anything or any(texts)
        layout = _layout(texts)
        if all(name in layout.index for name in REQUIRED_FIELDS):
            return layout
        seen |= layout.index.keys()
        if number >= HEADER_SEARCH_ROWS:
            break
    if not anything:
        raise _file_error(f"文件 {filename} 是空的。")
    if "sku" in seen and "quantity" not in seen:
        raise _file_error(f"文件 {filename} 的表头缺少「数量」列。")
    if "quantity" in seen and "sku" not in seen:
        raise _file_error(f"文件 {filename} 的表头缺少「商品编码」（SKU）列。")
    raise _file_error(
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
        name: _cell_text(cells[position]) if position < len(cells) else ""
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


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    # Excel stores every number as a float: 50 comes back as 50.0, a phone as 13800138000.0.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _xlsx_records(filename: str, data: bytes) -> Records:
    """The first sheet's rows, numbered as Excel numbers them; formulas are never evaluated."""
    _check_unpacked_size(filename, data)
    try:
        # data_only: a formula cell yields the value Excel cached for it, or None; never code.
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # a damaged or foreign zip fails in many ways inside openpyxl
        raise _file_error(f"文件 {filename} 不是有效的 Excel (.xlsx) 文件。") from exc
    try:
        if not workbook.worksheets:
            raise _file_error(f"文件 {filename} 中没有工作表。")
        sheet = workbook.worksheets[0]
        # Some writers record a wrong sheet size; reading to the real end keeps no row out.
        sheet.reset_dimensions()
        # min_row=1 makes openpyxl yield the rows a sheet leaves out, so numbering stays true.
        yield from enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1)
    finally:
        workbook.close()


def _check_unpacked_size(filename: str, data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise _file_error(f"文件 {filename} 不是有效的 Excel (.xlsx) 文件。") from exc
    # zipfile never inflates a member past its declared size, so the sum is a real bound.
    if unpacked > MAX_UNPACKED_BYTES:
        raise _file_error(f"文件 {filename} 解压后过大，不像是一份订单，请检查文件。")


def _csv_records(filename: str, data: bytes) -> Records:
    """CSV rows numbered as Excel shows them: one row per record, even with line breaks inside."""
    encoding = _text_encoding(filename, data)
    text = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline="")
    delimiter = _delimiter(text.read(SNIFF_CHARS))
    text.seek(0)
    # Only the delimiter is sniffed: Excel and WPS always quote with '"', and a sniffed quote
    # character could be fooled by an apostrophe in an injected formula.
    yield from enumerate(csv.reader(text, delimiter=delimiter), start=1)


def _text_encoding(filename: str, data: bytes) -> str:
    if data.startswith(OLE2_MAGIC):
        raise _file_error(
            f"文件 {filename} 是旧版 Excel (.xls) 格式，请另存为 .xlsx 或 CSV 后再上传。"
        )
    if data.startswith(UTF16_BOMS):
        raise _file_error(
            f"文件 {filename} 是 UTF-16 编码的文本，请在 Excel 或 WPS 中另存为"
            "「CSV UTF-8」或 .xlsx 后再上传。"
        )
    if b"\x00" in data:  # text in either accepted encoding never holds a NUL byte
        raise _file_error(f"文件 {filename} 不是 CSV 或 Excel (.xlsx) 文件。")
    for encoding in ENCODINGS:
        if _decodes(data, encoding):
            return encoding
    raise _file_error(
        f"无法识别文件 {filename} 的文字编码：只接受 UTF-8 或 GBK 编码的 CSV，"
        "请在 Excel 或 WPS 中另存为「CSV UTF-8」或 .xlsx 后再上传。"
    )


def _decodes(data: bytes, encoding: str) -> bool:
    """Whether all of `data` is valid in `encoding`, decoded in chunks that are then dropped."""
    decoder = codecs.getincrementaldecoder(encoding)()
    view = memoryview(data)
    try:
        for start in range(0, len(view), DECODE_CHUNK_BYTES):
            decoder.decode(view[start : start + DECODE_CHUNK_BYTES])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:  # one column, or nothing to tell from: Excel's default
        return ","


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
            raise _file_error(f"一次最多粘贴 {MAX_ROWS} 行，请分几次下单。", row=number)
        rows.append(BulkRow(number, fields[0], fields[1] if len(fields) > 1 else ""))
    if not rows:
        raise _file_error("没有粘贴任何商品。")
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
