"""Uploaded spreadsheets (CSV or .xlsx) read within limits, and cells written that never run.

Reading: a file is told by its content — a zip is .xlsx, anything else must be CSV text in
UTF-8 or GBK/GB18030 — and its name must agree. A workbook is inspected with `zipfile` before
openpyxl opens it (size unpacked, compression ratio, member count, encryption, odd names), then
read in read-only mode with formulas never evaluated; openpyxl parses its XML through defusedxml.
Either way at most MAX_SHEET_ROWS rows and MAX_COLUMNS columns are read. Everything wrong with a
file is a BulkFileError (an InvalidInput, code `invalid_file`), never anything else.

Writing: text cells that a spreadsheet would take for a formula get a leading apostrophe, in CSV
and xlsx alike; numbers (a refund's -12.80) stay numbers.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import zipfile
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import openpyxl

from shop.errors import InvalidInput

MAX_FILE_BYTES = 5 * 1024 * 1024
# Data rows (blank rows not counted) of one file: the callers say what a row is.
MAX_ROWS = 10_000
# Rows read at all, blank ones and the title and header included. A sheet can claim any row
# number (<row r="999999999">) and openpyxl fills the gap with empty rows, so reading stops here.
MAX_SHEET_ROWS = 2 * MAX_ROWS
# Columns looked at per row; a header beyond them is not found.
MAX_COLUMNS = 100
# A 10,000-row order unpacks to a few MB of XML; far more is a zip bomb, not an order. openpyxl
# holds the shared strings in memory, so this also bounds what a file can make us allocate.
MAX_UNPACKED_BYTES = 50 * 1024 * 1024
# Excel writes about ten parts; a workbook with many sheets and pictures a few hundred.
MAX_ZIP_MEMBERS = 500
# Excel's XML deflates about 20:1; a member of zeros or repeated tags, built to be unpacked,
# deflates 1000:1. Small members are left alone: their ratio says nothing and costs nothing.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECKED_ABOVE_BYTES = 1024 * 1024
ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
ENCRYPTED_FLAG = 0x1
ENCODINGS = ("utf-8-sig", "gb18030")
DECODE_CHUNK_BYTES = 64 * 1024
# The delimiter is told from the first records: the title, the header and a few rows.
SNIFF_CHARS = 16 * 1024
SNIFF_RECORDS = 20
DELIMITERS = (",", "\t", ";")  # in order of preference when two split equally well

ZIP_MAGIC = b"PK\x03\x04"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # the pre-2007 .xls (and .doc) container
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
XLSX_SUFFIX = ".xlsx"
TEXT_SUFFIXES = (".csv", ".txt", ".tsv")

# What Excel, LibreOffice and WPS would start a formula (or DDE payload) with (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_CODES = [ord(char) for char in FORMULA_STARTS]
# Characters XML 1.0 cannot hold: openpyxl refuses the C0 controls, and writes U+FFFE/U+FFFF
# into a file Excel then calls damaged.
NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

Record = tuple[int, Sequence[Any]]
Records = Generator[Record, None, None]


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


def file_error(message: str, row: int | None = None) -> BulkFileError:
    return BulkFileError([Problem(row, None, message)])


# --- reading ---------------------------------------------------------------------------------


def read_records(filename: str, data: bytes) -> Records:
    """The rows of an uploaded CSV or .xlsx file, numbered as Excel numbers them.

    Whatever can be told of the whole file (size, type, name, zip members, text encoding) is
    checked at once; a fault met while reading the rows is raised as they are read. Either way
    it is a BulkFileError.
    """
    if not data:
        raise file_error(f"文件 {filename} 是空的。")
    if len(data) > MAX_FILE_BYTES:
        raise file_error(
            f"文件 {filename} 有 {len(data) / 1024 / 1024:.1f} MB，"
            f"超过了 {MAX_FILE_BYTES // 1024 // 1024} MB 的上限，请分成几个文件上传。"
        )
    if data.startswith(OLE2_MAGIC):
        raise file_error(
            f"文件 {filename} 是旧版 Excel (.xls) 格式，请另存为 .xlsx 或 CSV 后再上传。"
        )
    suffix = _suffix(filename)
    if suffix and suffix != XLSX_SUFFIX and suffix not in TEXT_SUFFIXES:
        raise file_error(
            f"文件 {filename} 的类型（{suffix}）不受支持：只接受 CSV（.csv）或 Excel（.xlsx）文件。"
        )
    if data.startswith(ZIP_MAGIC):
        if suffix in TEXT_SUFFIXES:
            raise file_error(
                f"文件 {filename} 的内容是 Excel (.xlsx) 工作簿，扩展名却是 {suffix}，"
                "请把扩展名改回 .xlsx 后再上传。"
            )
        _check_workbook_archive(filename, data)
        return _xlsx_records(filename, data)
    if suffix == XLSX_SUFFIX:
        raise file_error(
            f"文件 {filename} 不是有效的 Excel (.xlsx) 文件（内容不是 Excel 工作簿，"
            "可能是改了扩展名的 CSV 或其他文件）。"
        )
    return _csv_records(filename, data, _text_encoding(filename, data))


def _suffix(filename: str) -> str:
    """The extension of the name's last part, lower case ("" for none); paths any OS writes."""
    name = re.split(r"[/\\]", filename)[-1]
    stem, _dot, suffix = name.rpartition(".")
    return f".{suffix.lower()}" if stem and suffix else ""


def cell_text(value: Any) -> str:
    """A cell as the text a person sees in it, stripped."""
    if value is None:
        return ""
    # Excel stores every number as a float: 50 comes back as 50.0, a phone as 13800138000.0.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _check_workbook_archive(filename: str, data: bytes) -> None:
    """Refuse a zip that is no workbook or that would unpack to far more than any order."""
    invalid = f"文件 {filename} 不是有效的 Excel (.xlsx) 文件。"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise file_error(invalid) from exc
    names = [member.filename for member in members]
    if len(members) > MAX_ZIP_MEMBERS:
        raise file_error(
            f"文件 {filename} 包含 {len(members)} 个部件，不像是一份订单，请检查文件。"
        )
    if any(member.flag_bits & ENCRYPTED_FLAG for member in members):
        raise file_error(f"文件 {filename} 设有密码，请在 Excel 或 WPS 中取消密码后再上传。")
    # zipfile never inflates a member past its declared size, so the sum is a real bound.
    if sum(member.file_size for member in members) > MAX_UNPACKED_BYTES or any(
        member.file_size > RATIO_CHECKED_ABOVE_BYTES
        and member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1)
        for member in members
    ):
        raise file_error(f"文件 {filename} 解压后过大，不像是一份订单，请检查文件。")
    if (
        "xl/workbook.xml" not in names
        or len(set(names)) != len(names)
        or any(member.compress_type not in ZIP_METHODS for member in members)
        or any(name.startswith("/") or ".." in name.split("/") for name in names)
    ):
        raise file_error(invalid)


def _xlsx_records(filename: str, data: bytes) -> Records:
    """The first sheet's rows, numbered as Excel numbers them; formulas are never evaluated."""
    invalid = f"文件 {filename} 不是有效的 Excel (.xlsx) 文件。"
    try:
        # data_only: a formula cell yields the value Excel cached for it, or None; never code.
        # keep_links=False: external workbooks a file links to are not even parsed.
        workbook = openpyxl.load_workbook(
            io.BytesIO(data), read_only=True, data_only=True, keep_links=False
        )
    except Exception as exc:  # a damaged or foreign zip fails in many ways inside openpyxl
        raise file_error(invalid) from exc
    try:
        if not workbook.worksheets:
            raise file_error(f"文件 {filename} 中没有工作表。")
        sheet: Any = workbook.worksheets[0]
        # Some writers record a wrong sheet size; reading to the real end keeps no row out.
        sheet.reset_dimensions()
        # min_row=1 makes openpyxl yield the rows a sheet leaves out, so numbering stays true.
        rows = sheet.iter_rows(min_row=1, max_col=MAX_COLUMNS, values_only=True)
        yield from _limited(filename, rows, invalid)
    finally:
        workbook.close()


def _limited(filename: str, rows: Iterator[Sequence[Any]], invalid: str) -> Records:
    """Number the rows, stop past MAX_SHEET_ROWS, and turn a parser's failure into ours."""
    number = 0
    while True:
        try:
            cells = next(rows, None)
        except Exception as exc:  # openpyxl, csv, zipfile and zlib each fail their own way
            raise file_error(invalid, row=number + 1) from exc
        if cells is None:
            return
        number += 1
        if number > MAX_SHEET_ROWS:
            raise file_error(
                f"文件 {filename} 超过 {MAX_SHEET_ROWS} 行（空行也计算在内），"
                "请删除多余的行或分成几个文件上传。",
                row=number,
            )
        yield number, cells[:MAX_COLUMNS]


def _csv_records(filename: str, data: bytes, encoding: str) -> Records:
    """CSV rows numbered as Excel shows them: one row per record, even with line breaks inside."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline="")
    # Only the delimiter is guessed: Excel and WPS always quote with '"', and a guessed quote
    # character could be fooled by an apostrophe in an injected formula.
    delimiter = _delimiter(text.read(SNIFF_CHARS))
    text.seek(0)
    rows = csv.reader(text, delimiter=delimiter)
    invalid = (
        f"文件 {filename} 不是有效的 CSV 文件（有无法读取的行，例如超长的单元格），"
        "请在 Excel 或 WPS 中另存为「CSV UTF-8」或 .xlsx 后再上传。"
    )
    yield from _limited(filename, rows, invalid)


def _text_encoding(filename: str, data: bytes) -> str:
    if data.startswith(UTF16_BOMS):
        raise file_error(
            f"文件 {filename} 是 UTF-16 编码的文本，请在 Excel 或 WPS 中另存为"
            "「CSV UTF-8」或 .xlsx 后再上传。"
        )
    if b"\x00" in data:  # text in either accepted encoding never holds a NUL byte
        raise file_error(f"文件 {filename} 不是 CSV 或 Excel (.xlsx) 文件。")
    for encoding in ENCODINGS:
        if _decodes(data, encoding):
            return encoding
    raise file_error(
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
    """The delimiter that splits the first records most consistently into several fields.

    Excel and WPS write commas, tabs ("Unicode text") or, in some locales, semicolons. Unlike
    csv.Sniffer, whose quote guess takes a second on a few KB of crafted text, this reads the
    sample once per candidate.
    """
    best, best_score = ",", (0, 0)
    for delimiter in DELIMITERS:
        counts = Counter(len(record) for record in _first_records(sample, delimiter))
        for fields, rows in counts.items():
            if fields > 1 and (rows, fields) > best_score:
                best, best_score = delimiter, (rows, fields)
    return best


def _first_records(sample: str, delimiter: str) -> list[list[str]]:
    records: list[list[str]] = []
    reader = csv.reader(io.StringIO(sample), delimiter=delimiter)
    try:
        for record in reader:
            if any(field.strip() for field in record):
                records.append(record)
            if len(records) == SNIFF_RECORDS:
                break
    except csv.Error:  # the sample ends inside a quoted field
        pass
    return records


# --- writing ---------------------------------------------------------------------------------


def neutralised(text: str) -> str:
    """Text a spreadsheet shows as it is, never runs: a formula-like start gets an apostrophe."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def xlsx_text(text: str) -> str:
    """Text for an xlsx cell: neutralised, without the control characters XML cannot hold.

    A vertical tab pasted from Word into a product name would otherwise fail the whole file.
    """
    return neutralised(NOT_IN_XML.sub("", text))
