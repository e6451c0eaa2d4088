"""Reading bulk order files as Excel, WPS and people write them, and refusing what can't be read."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from openpyxl import Workbook

from shop.errors import InvalidInput
from shop.procurement.bulk import (
    MAX_FILE_BYTES,
    MAX_ROWS,
    MAX_UNPACKED_BYTES,
    BulkFileError,
    BulkRow,
    Problem,
    parse_quick_order,
    read_bulk_file,
)

HEADER = ["商品编码", "数量", "收货人", "电话", "收货地址", "区县"]
CANTEEN = ("李敏", "13800138001", "江北街道文昌一路 9 号 机关食堂", "惠城区")
ROWS = [["PA-TEA-001", "20", *CANTEEN], ["XR-YR-001", "50", *CANTEEN]]
EXPECTED = [
    BulkRow(2, "PA-TEA-001", "20", *CANTEEN),
    BulkRow(3, "XR-YR-001", "50", *CANTEEN),
]


def write_csv(
    path: Path, rows: list[list[str]], *, encoding: str = "utf-8", delimiter: str = ","
) -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return path


def write_xlsx(path: Path, rows: Sequence[Sequence[object]]) -> Path:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def read(path: Path) -> list[BulkRow]:
    return read_bulk_file(path.name, path.read_bytes())


def refused(path: Path) -> list[Problem]:
    with pytest.raises(BulkFileError) as caught:
        read(path)
    return caught.value.problems


def test_reads_gbk_csv_as_excel_writes_it_on_chinese_windows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "order.csv", [HEADER, *ROWS], encoding="gb18030")
    with pytest.raises(UnicodeDecodeError):  # so the fallback is what reads it
        path.read_bytes().decode("utf-8")
    assert read(path) == EXPECTED


def test_reads_utf8_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "order.csv", [HEADER, *ROWS], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    rows = read(path)
    assert rows == EXPECTED
    assert rows[0].columns.sku == "商品编码"  # the mark is not part of the first header


def test_reads_plain_utf8_csv(tmp_path: Path) -> None:
    assert read(write_csv(tmp_path / "order.csv", [HEADER, *ROWS])) == EXPECTED


def test_reads_tab_separated_text(tmp_path: Path) -> None:
    rows = [HEADER, ["PA-TEA-001", "20", "李敏", "13800138001", "文昌一路, 9 号", "惠城区"]]
    path = write_csv(tmp_path / "order.txt", rows, delimiter="\t")
    assert read(path) == [
        BulkRow(2, "PA-TEA-001", "20", "李敏", "13800138001", "文昌一路, 9 号", "惠城区")
    ]


def test_reads_semicolon_separated_text(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "order.csv", [["SKU", "数量"], ["PA-TEA-001", "20"]], delimiter=";")
    assert read(path) == [BulkRow(2, "PA-TEA-001", "20")]


def test_xlsx_with_a_title_row_numbers_rows_as_excel_shows_them(tmp_path: Path) -> None:
    path = write_xlsx(
        tmp_path / "order.xlsx",
        [
            ["惠州市XX局 2026年11月消费帮扶采购单"],
            HEADER,
            ["PA-TEA-001", 50.0, "李敏", 13800138001, "文昌一路 9 号", "惠城区"],
            [],
            ["XR-YR-001", 2.5, None, None, None, None],
        ],
    )
    assert read(path) == [
        BulkRow(3, "PA-TEA-001", "50", "李敏", "13800138001", "文昌一路 9 号", "惠城区"),
        BulkRow(5, "XR-YR-001", "2.5"),
    ]


def test_xlsx_is_read_from_its_first_sheet_whichever_is_active(tmp_path: Path) -> None:
    workbook = Workbook()
    first = workbook.active
    assert first is not None
    first.append(["SKU", "数量"])
    first.append(["PA-TEA-001", 3])
    workbook.create_sheet("说明").append(["SKU", "数量"])
    workbook.active = 1  # saved with the second sheet in front
    workbook.save(tmp_path / "order.xlsx")
    assert read(tmp_path / "order.xlsx") == [BulkRow(2, "PA-TEA-001", "3")]


def test_csv_rows_count_the_header_and_blank_rows(tmp_path: Path) -> None:
    rows = [["SKU", "数量", "备注"], ["", "", ""], ["PA-TEA-001", "1", ""], ["", "", "只写了备注"]]
    rows.append(["XR-YR-001", "2", ""])
    assert read(write_csv(tmp_path / "order.csv", rows)) == [
        BulkRow(3, "PA-TEA-001", "1"),
        BulkRow(5, "XR-YR-001", "2"),
    ]


def test_cells_are_stripped_and_blank_delivery_cells_are_none(tmp_path: Path) -> None:
    rows = [HEADER, ["  PA-TEA-001 ", " 20\u3000", " ", "", "", ""]]
    assert read(write_csv(tmp_path / "order.csv", rows)) == [BulkRow(2, "PA-TEA-001", "20")]


def test_an_empty_file_is_one_clear_problem(tmp_path: Path) -> None:
    (tmp_path / "order.csv").write_bytes(b"")
    (problem,) = refused(tmp_path / "order.csv")
    assert problem == Problem(None, None, "文件 order.csv 是空的。")


def test_a_file_of_blank_lines_is_empty_too(tmp_path: Path) -> None:
    (tmp_path / "order.csv").write_bytes(b"\r\n,,\r\n\r\n")
    assert [p.message for p in refused(tmp_path / "order.csv")] == ["文件 order.csv 是空的。"]


def test_a_file_of_only_a_header_has_no_order_lines(tmp_path: Path) -> None:
    (problem,) = refused(write_csv(tmp_path / "order.csv", [HEADER]))
    assert "只有表头" in problem.message


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    line = b"PA-TEA-001,1\r\n"
    body = "SKU,数量\r\n".encode() + line * (MAX_FILE_BYTES // len(line) + 1)
    (tmp_path / "order.csv").write_bytes(body)
    assert len(body) > MAX_FILE_BYTES
    (problem,) = refused(tmp_path / "order.csv")
    assert "超过了 5 MB 的上限" in problem.message


def test_more_data_rows_than_the_limit_is_one_problem(tmp_path: Path) -> None:
    rows = [["惠州市XX局采购单", ""], ["SKU", "数量"]]
    rows += [["PA-TEA-001", "1"]] * (MAX_ROWS + 1)
    (problem,) = refused(write_csv(tmp_path / "order.csv", rows))
    assert f"超过 {MAX_ROWS} 行" in problem.message
    assert problem.row == MAX_ROWS + 3  # the first row past the limit, as Excel numbers it


def test_exactly_the_row_limit_is_accepted(tmp_path: Path) -> None:
    rows = [["SKU", "数量"], *[["PA-TEA-001", "1"]] * MAX_ROWS]
    assert len(read(write_csv(tmp_path / "order.csv", rows))) == MAX_ROWS


def test_formula_looking_csv_cells_stay_plain_text(tmp_path: Path) -> None:
    rows = [
        ["SKU", "数量"],
        ["=cmd|' /C calc'!A0", "=1+1"],
        ['=HYPERLINK("http://example.com","PA-TEA-001")', "+5"],
        ["@SUM(A1)", "-1"],
    ]
    assert read(write_csv(tmp_path / "order.csv", rows)) == [
        BulkRow(2, "=cmd|' /C calc'!A0", "=1+1"),
        BulkRow(3, '=HYPERLINK("http://example.com","PA-TEA-001")', "+5"),
        BulkRow(4, "@SUM(A1)", "-1"),
    ]


def test_xlsx_formulas_are_never_evaluated(tmp_path: Path) -> None:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["SKU", "数量", "收货人"])
    sheet.append(["PA-TEA-001", "=1+1", "李敏"])  # a formula with no value cached by Excel
    sheet.append(['=HYPERLINK("http://example.com","PA-TEA-001")', 3, "李敏"])
    sheet.append(["=cmd|' /C calc'!A0", 4, None])
    sheet["A4"].data_type = "s"  # typed as text ('=cmd…), not as a formula
    workbook.save(tmp_path / "order.xlsx")
    assert read(tmp_path / "order.xlsx") == [
        BulkRow(2, "PA-TEA-001", "", "李敏"),
        BulkRow(3, "", "3", "李敏"),
        BulkRow(4, "=cmd|' /C calc'!A0", "4"),
    ]


def test_xlsx_formula_gives_the_value_excel_cached_not_its_text(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "order.xlsx", [["SKU", "数量"], ["PA-TEA-001", 0]])
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    sheet = members["xl/worksheets/sheet1.xml"]
    cell = b'<c r="B2" t="n"><v>0</v></c>'
    assert cell in sheet
    members["xl/worksheets/sheet1.xml"] = sheet.replace(
        cell, b'<c r="B2"><f>SUM(1,1)*3</f><v>6</v></c>'
    )
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    assert read(path) == [BulkRow(2, "PA-TEA-001", "6")]


def test_headers_in_either_language_any_case_and_spacing(tmp_path: Path) -> None:
    header = ["SKU/商品编码", " Quantity ", "收货人", "PHONE", "收 货 地 址", "District", "备注"]
    rows = [header, ["PA-TEA-001", "20", *CANTEEN, "周五前送达"]]
    (row,) = read(write_csv(tmp_path / "order.csv", rows))
    assert row == BulkRow(2, "PA-TEA-001", "20", *CANTEEN)
    assert (row.columns.sku, row.columns.quantity, row.columns.address) == (
        "SKU/商品编码",
        "Quantity",
        "收 货 地 址",
    )


def test_full_width_headers_typed_with_a_chinese_ime(tmp_path: Path) -> None:
    rows = [["ＳＫＵ", "数量／quantity"], ["PA-TEA-001", "1"]]
    assert read(write_csv(tmp_path / "order.csv", rows)) == [BulkRow(2, "PA-TEA-001", "1")]


def test_a_missing_quantity_header_is_named(tmp_path: Path) -> None:
    rows = [["商品编码", "件数"], ["PA-TEA-001", "1"]]
    (problem,) = refused(write_csv(tmp_path / "order.csv", rows))
    assert problem.message == "文件 order.csv 的表头缺少「数量」列。"


def test_a_header_below_the_first_ten_rows_is_not_found(tmp_path: Path) -> None:
    rows = [[f"说明第 {n} 行", ""] for n in range(1, 11)] + [["SKU", "数量"], ["PA-TEA-001", "1"]]
    (problem,) = refused(write_csv(tmp_path / "order.csv", rows))
    assert "找不到" in problem.message and "表头" in problem.message


def test_png_bytes_are_not_an_order_file(tmp_path: Path) -> None:
    (tmp_path / "order.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    (problem,) = refused(tmp_path / "order.csv")
    assert problem.message == "文件 order.csv 不是 CSV 或 Excel (.xlsx) 文件。"


def test_text_in_another_encoding_is_refused_with_what_to_do(tmp_path: Path) -> None:
    junk = "SKU,Größe\r\nPA-TEA-001,café\r\n".encode("latin-1")
    for encoding in ("utf-8", "gb18030"):
        with pytest.raises(UnicodeDecodeError):
            junk.decode(encoding)
    (tmp_path / "order.csv").write_bytes(junk)
    (problem,) = refused(tmp_path / "order.csv")
    assert "无法识别" in problem.message and "CSV UTF-8" in problem.message


def test_old_xls_files_are_asked_to_be_saved_as_xlsx(tmp_path: Path) -> None:
    (tmp_path / "order.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    (problem,) = refused(tmp_path / "order.xls")
    assert "旧版 Excel (.xls)" in problem.message


def test_utf16_text_is_asked_to_be_saved_as_csv_utf8(tmp_path: Path) -> None:
    (tmp_path / "order.txt").write_bytes("SKU\t数量\r\nPA-TEA-001\t1\r\n".encode("utf-16"))
    (problem,) = refused(tmp_path / "order.txt")
    assert "UTF-16" in problem.message


def test_a_zip_that_is_not_a_workbook_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not a workbook")
    (tmp_path / "order.xlsx").write_bytes(buffer.getvalue())
    (problem,) = refused(tmp_path / "order.xlsx")
    assert problem.message == "文件 order.xlsx 不是有效的 Excel (.xlsx) 文件。"


def test_a_small_zip_that_unpacks_huge_is_refused_unopened(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/sharedStrings.xml", bytes(MAX_UNPACKED_BYTES + 1))
    assert len(buffer.getvalue()) < MAX_FILE_BYTES
    (tmp_path / "order.xlsx").write_bytes(buffer.getvalue())
    (problem,) = refused(tmp_path / "order.xlsx")
    assert "解压后过大" in problem.message


def test_format_is_told_by_content_and_the_name_must_agree(tmp_path: Path) -> None:
    xlsx = write_xlsx(tmp_path / "order.xlsx", [["SKU", "数量"], ["PA-TEA-001", 7]])
    assert read(xlsx) == [BulkRow(2, "PA-TEA-001", "7")]
    renamed = tmp_path / "order.csv"
    renamed.write_bytes(xlsx.read_bytes())
    (problem,) = refused(renamed)
    assert "扩展名改回 .xlsx" in problem.message


def test_a_file_error_is_invalid_input_with_every_problem_as_a_detail(tmp_path: Path) -> None:
    (tmp_path / "order.csv").write_bytes(b"")
    with pytest.raises(InvalidInput) as caught:
        read(tmp_path / "order.csv")
    assert caught.value.status == 422
    assert caught.value.code == "invalid_file"
    assert caught.value.details == [
        {"row": None, "column": None, "message": "文件 order.csv 是空的。"}
    ]


def test_quick_order_lines_with_any_common_separator() -> None:
    text = "PA-TEA-001 5\nXR-YR-001,10\n\nZF-NM-001\t30\nCH-NM-001，2\n  AL-MS-001   1  \n"
    assert parse_quick_order(text) == [
        BulkRow(1, "PA-TEA-001", "5"),
        BulkRow(2, "XR-YR-001", "10"),
        BulkRow(4, "ZF-NM-001", "30"),
        BulkRow(5, "CH-NM-001", "2"),
        BulkRow(6, "AL-MS-001", "1"),
    ]


def test_quick_order_keeps_bad_lines_for_the_check_to_report() -> None:
    text = "SKU 数量\nPA-TEA-001\nPA-TEA-002 5 箱\nPA-TEA-003 x5\n"
    assert parse_quick_order(text) == [
        BulkRow(2, "PA-TEA-001", ""),
        BulkRow(3, "PA-TEA-002", "5 箱"),
        BulkRow(4, "PA-TEA-003", "x5"),
    ]


def test_quick_order_with_nothing_pasted_is_refused() -> None:
    with pytest.raises(BulkFileError) as caught:
        parse_quick_order(" \n\n\t\n")
    assert [p.message for p in caught.value.problems] == ["没有粘贴任何商品。"]


def test_quick_order_over_the_row_limit_is_refused() -> None:
    with pytest.raises(BulkFileError) as caught:
        parse_quick_order("PA-TEA-001 1\n" * (MAX_ROWS + 1))
    assert [p.row for p in caught.value.problems] == [MAX_ROWS + 1]


def test_problem_as_detail() -> None:
    problem = Problem(12, "数量", "第 12 行：数量 7 不是 5 的整数倍。")
    assert problem.as_detail() == {
        "row": 12,
        "column": "数量",
        "message": "第 12 行：数量 7 不是 5 的整数倍。",
    }
