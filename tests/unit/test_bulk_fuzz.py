"""Fuzzing the bulk-file readers: whatever arrives, a result or BulkFileError, nothing else.

Bulk order files (procurement) and counter-sales files (ledger) share one reader
(shop.spreadsheets); each property runs both. Inputs: random bytes under random names, random
cells as text in random encodings and delimiters, real .xlsx files with random cells, and real
.xlsx files truncated, bit-flipped or with a part replaced. The counter-sales row checks, which
need no database, are fuzzed with random cells too.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpyxl import Workbook

from shop.catalog.models import County, District
from shop.errors import InvalidInput
from shop.ledger.offline import HEADER_NAMES as SALE_HEADERS
from shop.ledger.offline import SaleRow, _Catalogue, _check_row, read_sale_rows
from shop.procurement.bulk import HEADER_NAMES as ORDER_HEADERS
from shop.procurement.bulk import BulkRow, read_bulk_file
from shop.spreadsheets import MAX_ROWS, BulkFileError, cell_text

TODAY = date(2026, 6, 15)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every header either reader knows, in both languages, plus a few that nobody knows.
HEADERS = sorted(
    {name for names in ORDER_HEADERS.values() for name in names}
    | {name for chinese, _english in SALE_HEADERS.values() for name in chinese}
    | {english for _chinese, english in SALE_HEADERS.values()}
    | {"备注", "金额(元)", "ＳＫＵ", "数量/quantity", ""}
)
NAMES = st.one_of(
    st.sampled_from(
        [
            "order.csv",
            "order.CSV",
            "order.xlsx",
            "order.txt",
            "order.tsv",
            "order",
            "",
            ".csv",
            "订单.xlsx",
            "C:\\fakepath\\订单.csv",
            "../../etc/passwd.csv",
            "order.xls",
            "order.xlsm",
            "setup.exe",
            "photo.png",
            "archive.tar.gz",
        ]
    ),
    st.text(max_size=40),
)
ENCODINGS = ["utf-8", "utf-8-sig", "gbk", "gb18030", "utf-16", "latin-1", "shift_jis"]
CELL_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "PA-TEA-001",
            "XR-YR-001",
            "20",
            "-5",
            "+5",
            "2.5",
            "１２",
            "NaN",
            "nan",
            "inf",
            "-Infinity",
            "1e999999999",
            "1e-999999999",
            "sNaN",
            "9" * 400,
            "=1+1",
            '=HYPERLINK("http://example.com","x")',
            "@SUM(A1)",
            "=cmd|' /C calc'!A0",
            "13800138000",
            "0752-2281234",
            "惠城区",
            "普安县",
            "茶叶",
            "是",
            "否",
            "2026-02-30",
            "2026年3月1日",
            "20260301",
            "0000-01-01",
            "9999-12-31 23:59:59",
            "¥1,234.50元",
            " ",
            "\u3000",
            "\t",
            "\r\n",
            '"',
            "x" * 5000,
        ]
    ),
)
XLSX_VALUE = st.one_of(
    CELL_TEXT.map(lambda text: "".join(ch for ch in text if ch >= " " or ch in "\t\n\r")),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**18), max_value=10**18),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(min_value=datetime(1900, 3, 1), max_value=datetime(9999, 12, 31)),
    st.dates(min_value=date(1900, 3, 1)),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3000)),
)


ORDER_HEADER = ["商品编码", "数量", "收货人", "电话", "收货地址", "区县", "备注"]
SALES_HEADER = ["日期", "SKU", "产地县", "品类", "金额", "数量", "柜台", "区县", "认定产品"]


def rows_of(cells: st.SearchStrategy[Any]) -> st.SearchStrategy[list[list[Any]]]:
    """Maybe a title row; a header (either reader's in any order, or any known and unknown
    names); then rows of cells, now and then a blank one."""
    title = st.sampled_from([[], [["惠州市XX局 2026年消费帮扶采购单"]]])
    header = st.one_of(
        st.permutations(ORDER_HEADER),
        st.permutations(SALES_HEADER),
        st.lists(st.sampled_from(HEADERS), min_size=1, max_size=10),
    )
    body = st.lists(st.lists(cells, max_size=10), max_size=25)
    return st.tuples(title, header, body).map(lambda parts: [*parts[0], list(parts[1]), *parts[2]])


READERS: list[Callable[[str, bytes], list[Any]]] = [read_bulk_file, read_sale_rows]


def read_or_refuse(name: str, data: bytes) -> None:
    """The property: each reader returns rows or raises BulkFileError saying why."""
    for read in READERS:
        try:
            rows = read(name, data)
        except BulkFileError as exc:
            assert isinstance(exc, InvalidInput) and exc.status == 422
            assert exc.code == "invalid_file"
            assert exc.problems and all(p.message for p in exc.problems)
            assert exc.details == [p.as_detail() for p in exc.problems]
        else:
            assert 0 < len(rows) <= MAX_ROWS
            assert all(row.row >= 1 for row in rows)


def xlsx_bytes(rows: list[list[Any]]) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def csv_text(rows: list[list[Any]], delimiter: str, quoting: int) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


@settings(FUZZ, max_examples=300)
@given(name=NAMES, data=st.binary(max_size=4096))
def test_random_bytes_are_read_or_refused(name: str, data: bytes) -> None:
    read_or_refuse(name, data)


@FUZZ
@given(
    name=st.sampled_from(["order.csv", "order.txt", "order", "order.xlsx"]),
    rows=rows_of(CELL_TEXT),
    encoding=st.sampled_from(ENCODINGS),
    delimiter=st.sampled_from([",", "\t", ";", "|", " "]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
)
def test_random_text_in_any_encoding_is_read_or_refused(
    name: str, rows: list[list[str]], encoding: str, delimiter: str, quoting: int
) -> None:
    read_or_refuse(name, csv_text(rows, delimiter, quoting).encode(encoding, errors="replace"))


@FUZZ
@given(
    rows=rows_of(CELL_TEXT),
    encoding=st.sampled_from(["utf-8-sig", "gb18030"]),
    delimiter=st.sampled_from([",", "\t", ";"]),
)
def test_csv_cells_written_by_excel_come_back_as_written(
    rows: list[list[str]], encoding: str, delimiter: str
) -> None:
    """Separated as Excel or WPS separate, quoted as they quote, in an encoding the shop
    accepts: every order row comes back with its cells as written (stripped), on the line
    Excel shows it."""
    header = ["商品编码", "数量", "收货人", "电话", "收货地址", "区县"]
    # Text never holds a NUL (a file with one is refused as binary).
    body = [[cell.replace("\x00", "") for cell in (row + [""] * 6)[:6]] for row in rows[1:]]
    data = csv_text([header, *body], delimiter, csv.QUOTE_MINIMAL).encode(
        encoding, errors="replace"
    )
    try:
        read = read_bulk_file("order.csv", data)
    except BulkFileError as exc:
        # Only a file without a single order row may be refused, and it says so.
        assert not any(cell.strip() for row in body for cell in row[:6]), exc.message
        return
    decoded = [
        [cell.encode(encoding, errors="replace").decode(encoding) for cell in row] for row in body
    ]
    expected = [
        BulkRow(
            number,
            *(cell_text(cell) for cell in row[:2]),
            *(cell.strip() or None for cell in row[2:]),
        )
        for number, row in enumerate(decoded, start=2)
        if any(cell.strip() for cell in row)
    ]
    assert read == expected


@settings(FUZZ, max_examples=60)
@given(rows=rows_of(XLSX_VALUE), name=st.sampled_from(["order.xlsx", "订单.XLSX", "order"]))
def test_real_workbooks_with_random_cells_are_read_or_refused(
    rows: list[list[Any]], name: str
) -> None:
    read_or_refuse(name, xlsx_bytes(rows))


@settings(FUZZ, max_examples=40)
@given(
    texts=st.lists(
        CELL_TEXT.map(lambda t: "".join(ch for ch in t if " " <= ch < "\ufffe")),
        min_size=2,
        max_size=2,
    ).filter(lambda texts: any(t.strip() for t in texts) and not any(t[:1] == "=" for t in texts))
)
def test_text_in_a_workbook_comes_back_as_typed(texts: list[str]) -> None:
    (row,) = read_bulk_file("order.xlsx", xlsx_bytes([["SKU", "数量"], texts]))
    assert (row.row, row.sku, row.quantity_text) == (2, texts[0].strip(), texts[1].strip())


VALID_WORKBOOK = xlsx_bytes(
    [
        ["SKU", "数量", "收货人", "电话", "收货地址", "区县"],
        ["PA-TEA-001", 20, "李敏", 13800138001, "江北街道文昌一路 9 号", "惠城区"],
        ["XR-YR-001", "50", None, None, None, None],
    ]
)


def replace_part(data: bytes, part: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            body = content if info.filename == part else source.read(info.filename)
            target.writestr(info.filename, body, zipfile.ZIP_DEFLATED)
    return out.getvalue()


PARTS = sorted(zipfile.ZipFile(io.BytesIO(VALID_WORKBOOK)).namelist())
XMLISH = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.sampled_from(
        [
            b"",
            b"<",
            b'<?xml version="1.0"?><worksheet/>',
            b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            b'<sheetData><row r="1"><c r="A1" t="s"><v>999</v></c></row></sheetData></worksheet>',
            b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            b'<sheetData><row r="1"><c r="A1" t="n"><v>abc</v></c>'
            b'<c r="ZZZZ1" t="d"><v>not a date</v></c></row></sheetData></worksheet>',
            b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
            b'<sheetData><row r="-1"><c r="A0"><v>1</v></c></row></sheetData></worksheet>',
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><sst>&b;</sst>',
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            b"<sst><si><t>&e;</t></si></sst>",
        ]
    ),
)


@FUZZ
@given(
    how=st.sampled_from(["truncate", "flip", "part"]),
    at=st.integers(min_value=0, max_value=len(VALID_WORKBOOK) - 1),
    byte=st.integers(min_value=0, max_value=255),
    part=st.sampled_from(PARTS),
    content=XMLISH,
)
def test_damaged_workbooks_are_refused_never_crash(
    how: str, at: int, byte: int, part: str, content: bytes
) -> None:
    if how == "truncate":
        data = VALID_WORKBOOK[:at]
    elif how == "flip":
        data = (
            VALID_WORKBOOK[:at]
            + bytes([VALID_WORKBOOK[at] ^ (byte or 1)])
            + VALID_WORKBOOK[at + 1 :]
        )
    else:
        data = replace_part(VALID_WORKBOOK, part, content)
    read_or_refuse("order.xlsx", data)


COUNTIES = {"普安县": County(name="普安县", code="522323", name_en="Pu'an", cooperation=True)}
DISTRICTS = {"惠城区": District(name="惠城区", code="441302", name_en="Huicheng")}
CATALOGUE = _Catalogue(products={}, counties=COUNTIES, districts=DISTRICTS)
# A sound value for each field, drawn half the time, so that whole rows pass now and then.
SOUND_SALE = {
    "date": st.sampled_from(["2026-06-01", "2026/6/1", "20260601", date(2026, 6, 1)]),
    "sku": st.sampled_from([None, ""]),
    "county": st.just("普安县"),
    "category": st.sampled_from(["茶叶", "tea"]),
    "amount": st.sampled_from(["12.5", "¥1,234.50元", "0.01", 88, 12.5]),
    "quantity": st.sampled_from(["3", 3, 3.0, "３"]),
    "counter": st.just("普安县专柜"),
    "district": st.just("惠城区"),
    "certified": st.sampled_from(["是", "否", None]),
}


@st.composite
def sale_cells(draw: st.DrawFn) -> dict[str, Any]:
    """A sound row with a few of its cells (maybe none) replaced by anything at all."""
    cells = {name: draw(SOUND_SALE[name]) for name in SALE_HEADERS}
    for name in draw(st.sets(st.sampled_from(sorted(SALE_HEADERS)), max_size=3)):
        cells[name] = draw(XLSX_VALUE)
    return cells


@settings(FUZZ, max_examples=300)
@given(cells=sale_cells())
def test_counter_sale_rows_are_checked_or_refused_never_crash(cells: dict[str, Any]) -> None:
    row = SaleRow(row=2, cells=cells, headers={})
    sale, problems = _check_row(row, CATALOGUE, TODAY)
    assert (sale is None) == bool(problems)
    assert all(problem.row == 2 and problem.message for problem in problems)
    if sale is not None:
        assert 0 < sale.amount_fen <= 100_000_000 * 100
        assert 0 < sale.quantity <= 1_000_000 and sale.sold_on <= TODAY
