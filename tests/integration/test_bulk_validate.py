"""Checking and pricing a unit's bulk order file against the demo catalogue."""

from __future__ import annotations

import csv
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from openpyxl import Workbook
from sqlalchemy import delete, select, update

from shop.catalog.models import Product, TierPrice
from shop.errors import InvalidInput
from shop.extensions import db
from shop.procurement.bulk import (
    PricedLine,
    check_bulk_rows,
    parse_quick_order,
    read_bulk_file,
    tier_price,
)

SAMPLE = Path(__file__).resolve().parents[2] / "shop" / "procurement" / "sample"
HEADER = ["商品编码", "数量", "收货人", "电话", "收货地址", "区县"]
CANTEEN_1 = ["李敏", "13800138001", "江北街道文昌一路 9 号 机关食堂", "惠城区"]
CANTEEN_2 = ["陈伟", "0752-2281234", "河南岸街道演达大道 12 号 职工食堂", "惠城区"]


@pytest.fixture
def plain_app(app: Flask) -> Flask:
    """The demo shop without unit-procurement rules, so that each test sets only its own."""
    with app.app_context():
        db.session.execute(delete(TierPrice))
        db.session.execute(update(Product).values(min_order_quantity=1, quantity_increment=1))
        db.session.commit()
    return app


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="gb18030", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)
    return path


def check(app: Flask, path: Path) -> list[PricedLine]:
    rows = read_bulk_file(path.name, path.read_bytes())
    with app.app_context():
        return check_bulk_rows(db.session, rows, today=date.today())


def problems(app: Flask, path: Path) -> list[dict[str, Any]]:
    with pytest.raises(InvalidInput) as caught:
        check(app, path)
    assert caught.value.code == "invalid_rows"
    return caught.value.details


def change_product(app: Flask, sku: str, **values: Any) -> None:
    with app.app_context():
        db.session.execute(update(Product).where(Product.sku == sku).values(**values))
        db.session.commit()


def add_tiers(app: Flask, sku: str, *tiers: tuple[int, int]) -> None:
    with app.app_context():
        product = db.session.scalars(select(Product).where(Product.sku == sku)).one()
        product.tiers.extend(TierPrice(min_quantity=m, price_fen=p) for m, p in tiers)
        db.session.commit()


def test_the_sample_files_are_clean_orders_priced_from_the_catalogue(plain_app: Flask) -> None:
    for name, first_row in (("bulk-order-template.csv", 2), ("bulk-order-template.xlsx", 3)):
        lines = check(plain_app, SAMPLE / name)
        assert [(line.row, line.product.sku, line.quantity) for line in lines] == [
            (first_row, "PA-TEA-001", 20),
            (first_row + 1, "XR-YR-001", 50),
            (first_row + 2, "ZF-NM-001", 30),
        ]
        assert [(line.unit_price_fen, line.amount_fen) for line in lines] == [
            (12800, 256000),
            (5900, 295000),
            (4800, 144000),
        ]
        assert {line.district for line in lines} == {"惠城区"}
        assert sum(line.amount_fen for line in lines) == 695000


def test_the_sample_files_pass_against_the_demo_data_as_loaded(app: Flask) -> None:
    for name in ("bulk-order-template.csv", "bulk-order-template.xlsx"):
        lines = check(app, SAMPLE / name)
        assert [line.product.sku for line in lines] == ["PA-TEA-001", "XR-YR-001", "ZF-NM-001"]
        assert all(line.amount_fen == line.unit_price_fen * line.quantity for line in lines)


def test_clean_file_keeps_each_lines_delivery_and_lines_without_one(
    plain_app: Flask, tmp_path: Path
) -> None:
    path = write_csv(
        tmp_path / "order.csv",
        [
            HEADER,
            ["PA-TEA-001", "2", *CANTEEN_1],
            ["PA-TEA-001", "3", *CANTEEN_2],
            ["ZF-NM-001", "5", "", "", "", ""],
        ],
    )
    lines = check(plain_app, path)
    assert [(line.recipient, line.phone, line.address, line.district) for line in lines] == [
        tuple(CANTEEN_1),
        tuple(CANTEEN_2),
        (None, None, None, None),
    ]
    assert [line.amount_fen for line in lines] == [2 * 12800, 3 * 12800, 5 * 4800]


def test_unknown_and_inactive_skus_are_reported(plain_app: Flask, tmp_path: Path) -> None:
    change_product(plain_app, "PA-TEA-002", active=False)
    path = write_csv(
        tmp_path / "order.csv",
        [["SKU", "数量"], ["NO-SUCH-SKU", "1"], ["PA-TEA-002", "1"], ["", "1"]],
    )
    assert problems(plain_app, path) == [
        {"row": 2, "column": "SKU", "message": "第 2 行：没有编码为「NO-SUCH-SKU」的在售商品。"},
        {"row": 3, "column": "SKU", "message": "第 3 行：没有编码为「PA-TEA-002」的在售商品。"},
        {"row": 4, "column": "SKU", "message": "第 4 行：商品编码为空。"},
    ]


def test_bad_quantities_are_reported_and_formulas_are_not_worked_out(
    plain_app: Flask, tmp_path: Path
) -> None:
    rows = [["SKU", "Quantity"]]
    rows += [[f"PA-TEA-00{n}", text] for n, text in enumerate(["abc", "0", "-3", "2.5"], 1)]
    rows += [["PA-TEA-005", "=1+1"], ["QL-TEA-001", ""], ["=cmd|' /C calc'!A0", "5"]]
    assert problems(plain_app, write_csv(tmp_path / "order.csv", rows)) == [
        {"row": 2, "column": "Quantity", "message": "第 2 行：数量「abc」不是整数。"},
        {"row": 3, "column": "Quantity", "message": "第 3 行：数量必须大于 0，填写的是 0。"},
        {"row": 4, "column": "Quantity", "message": "第 4 行：数量必须大于 0，填写的是 -3。"},
        {"row": 5, "column": "Quantity", "message": "第 5 行：数量「2.5」不是整数。"},
        {"row": 6, "column": "Quantity", "message": "第 6 行：数量「=1+1」不是整数。"},
        {"row": 7, "column": "Quantity", "message": "第 7 行：数量为空。"},
        {
            "row": 8,
            "column": "SKU",
            "message": "第 8 行：没有编码为「=cmd|' /C calc'!A0」的在售商品。",
        },
    ]


def test_full_width_digits_are_read_as_a_quantity(plain_app: Flask, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "order.csv", [["SKU", "数量"], ["PA-TEA-001", "１２"]])
    assert [line.quantity for line in check(plain_app, path)] == [12]


def test_below_the_minimum_order_quantity(plain_app: Flask, tmp_path: Path) -> None:
    change_product(plain_app, "PA-TEA-001", min_order_quantity=10)
    path = write_csv(tmp_path / "order.csv", [HEADER, ["PA-TEA-001", "9", *CANTEEN_1]])
    assert problems(plain_app, path) == [
        {
            "row": 2,
            "column": "数量",
            "message": "第 2 行：普安红茶（特级）（PA-TEA-001）最少订 10，填写的是 9。",
        }
    ]
    write_csv(path, [HEADER, ["PA-TEA-001", "10", *CANTEEN_1]])
    assert [line.quantity for line in check(plain_app, path)] == [10]


def test_not_a_multiple_of_the_increment(plain_app: Flask, tmp_path: Path) -> None:
    change_product(plain_app, "XR-YR-001", quantity_increment=5)
    rows = [HEADER, *[[""] * 6] * 10, ["XR-YR-001", "7", *CANTEEN_1], ["XR-YR-001", "10"]]
    assert problems(plain_app, write_csv(tmp_path / "order.csv", rows)) == [
        {"row": 12, "column": "数量", "message": "第 12 行：数量 7 不是 5 的整数倍。"}
    ]


def test_out_of_season_today(plain_app: Flask, tmp_path: Path) -> None:
    today = date.today()  # a window that ends yesterday: out of season whatever the date
    start, end = today + timedelta(days=2), today - timedelta(days=1)
    window = {"season_from": start.strftime("%m-%d"), "season_to": end.strftime("%m-%d")}
    change_product(plain_app, "ZF-LI-001", **window)
    path = write_csv(tmp_path / "order.csv", [["SKU", "数量"], ["ZF-LI-001", "1"]])
    assert problems(plain_app, path) == [
        {
            "row": 2,
            "column": "SKU",
            "message": f"第 2 行：贞丰蜂糖李（ZF-LI-001）不在销售季"
            f"（{window['season_from']} 至 {window['season_to']}）。",
        }
    ]


def test_stock_is_compared_with_the_files_total_and_reported_on_every_row(
    plain_app: Flask, tmp_path: Path
) -> None:
    change_product(plain_app, "PA-TEA-003", stock=150)
    rows = [HEADER, ["PA-TEA-003", "100", *CANTEEN_1], ["PA-TEA-003", "51", *CANTEEN_2]]
    message = "普安古茶树红茶礼盒（PA-TEA-003）库存不足：文件中共订 151，现有库存 150。"
    assert problems(plain_app, write_csv(tmp_path / "order.csv", rows)) == [
        {"row": 2, "column": "数量", "message": f"第 2 行：{message}"},
        {"row": 3, "column": "数量", "message": f"第 3 行：{message}"},
    ]
    rows[2][1] = "50"
    assert (
        sum(line.quantity for line in check(plain_app, write_csv(tmp_path / "ok.csv", rows))) == 150
    )


def test_bad_phone_unknown_district_and_half_filled_delivery(
    plain_app: Flask, tmp_path: Path
) -> None:
    header = ["SKU", "数量", "Recipient", "Phone", "Address", "区县"]
    rows = [
        header,
        ["PA-TEA-001", "1", "李敏", "12345", "文昌一路 9 号", "惠城区"],
        ["PA-TEA-002", "1", "李敏", "13800138001", "文昌一路 9 号", "南山区"],
        ["PA-TEA-004", "1", "李敏", "", "", ""],
        ["PA-TEA-005", "1", "", "", "", "惠阳区"],
    ]
    half = "填写收货信息时，Recipient、Phone和Address须一并填写，此行缺少"
    assert problems(plain_app, write_csv(tmp_path / "order.csv", rows)) == [
        {
            "row": 2,
            "column": "Phone",
            "message": "第 2 行：电话「12345」不是有效的手机或固定电话号码。",
        },
        {"row": 3, "column": "区县", "message": "第 3 行：惠州市没有名为「南山区」的区县。"},
        {"row": 4, "column": "Phone", "message": f"第 4 行：{half}Phone。"},
        {"row": 4, "column": "Address", "message": f"第 4 行：{half}Address。"},
        {"row": 5, "column": "Recipient", "message": f"第 5 行：{half}Recipient。"},
        {"row": 5, "column": "Phone", "message": f"第 5 行：{half}Phone。"},
        {"row": 5, "column": "Address", "message": f"第 5 行：{half}Address。"},
    ]


def test_duplicate_line_is_reported_on_the_later_row_citing_the_earlier(
    plain_app: Flask, tmp_path: Path
) -> None:
    rows = [
        HEADER,
        ["PA-TEA-001", "2", *CANTEEN_1],
        ["PA-TEA-001", "2", *CANTEEN_2],  # same SKU elsewhere: fine
        ["XR-YR-001", "1", "", "", "", ""],
        ["PA-TEA-001", "3", *CANTEEN_1],
        ["XR-YR-001", "4", "", "", "", ""],
    ]
    assert problems(plain_app, write_csv(tmp_path / "order.csv", rows)) == [
        {
            "row": 5,
            "column": "商品编码",
            "message": "第 5 行：与第 2 行重复（同一商品、同一收货信息），请合并为一行。",
        },
        {
            "row": 6,
            "column": "商品编码",
            "message": "第 6 行：与第 4 行重复（同一商品、同一收货信息），请合并为一行。",
        },
    ]


def test_every_problem_is_listed_at_once_with_row_and_column_as_the_file_names_them(
    plain_app: Flask, tmp_path: Path
) -> None:
    change_product(plain_app, "XR-YR-001", quantity_increment=5, min_order_quantity=10)
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["惠州市XX局 2026年11月消费帮扶采购单"])
    sheet.append(["SKU/商品编码", "Quantity", "收货人", "phone", "收货地址", "District"])
    sheet.append(["PA-TEA-001", 5, *CANTEEN_1])
    sheet.append(["NO-SUCH-SKU", "two", *CANTEEN_1])
    sheet.append(["XR-YR-001", 7, "陈伟", "110", "演达大道 12 号", "深圳市"])
    sheet.append(["PA-TEA-001", 1, *CANTEEN_1])
    workbook.save(tmp_path / "order.xlsx")
    with pytest.raises(InvalidInput) as caught:
        check(plain_app, tmp_path / "order.xlsx")
    assert caught.value.message == "共有 3 行有误，没有创建任何订单，请改正后重新提交。"
    assert [(d["row"], d["column"]) for d in caught.value.details] == [
        (4, "SKU/商品编码"),
        (4, "Quantity"),
        (5, "Quantity"),
        (5, "Quantity"),
        (5, "phone"),
        (5, "District"),
        (6, "SKU/商品编码"),
    ]
    assert all(d["message"].startswith(f"第 {d['row']} 行：") for d in caught.value.details)


def test_nothing_to_check_is_refused(plain_app: Flask) -> None:
    with plain_app.app_context(), pytest.raises(InvalidInput) as caught:
        check_bulk_rows(db.session, [], today=date.today())
    assert caught.value.code == "invalid_rows"


def test_quick_order_is_checked_like_a_file(plain_app: Flask) -> None:
    rows = parse_quick_order("PA-TEA-001 2\nNO-SUCH 1\nXR-YR-001\n")
    with plain_app.app_context(), pytest.raises(InvalidInput) as caught:
        check_bulk_rows(db.session, rows, today=date.today())
    assert caught.value.details == [
        {"row": 2, "column": "商品编码", "message": "第 2 行：没有编码为「NO-SUCH」的在售商品。"},
        {"row": 3, "column": "数量", "message": "第 3 行：数量为空。"},
    ]


@pytest.mark.parametrize(
    ("quantity", "price_fen"), [(1, 5900), (49, 5900), (50, 5500), (199, 5500), (200, 5000)]
)
def test_tier_price_edges(plain_app: Flask, quantity: int, price_fen: int) -> None:
    add_tiers(plain_app, "XR-YR-001", (200, 5000), (50, 5500))
    with plain_app.app_context():
        product = db.session.scalars(select(Product).where(Product.sku == "XR-YR-001")).one()
        assert tier_price(product, quantity) == price_fen


@pytest.mark.parametrize(
    ("quantities", "price_fen"),
    [
        (["50"], 5500),
        (["49"], 5900),
        (["30", "20"], 5500),
        (["30", "19"], 5900),
        (["100", "99"], 5500),
        (["150", "50"], 5000),
        (["199"], 5500),
        (["200"], 5000),
    ],
)
def test_tiers_go_by_the_files_total_of_a_sku(
    plain_app: Flask, tmp_path: Path, quantities: list[str], price_fen: int
) -> None:
    add_tiers(plain_app, "XR-YR-001", (50, 5500), (200, 5000))
    canteens = [CANTEEN_1, CANTEEN_2]
    rows = [HEADER] + [["XR-YR-001", q, *canteens[i]] for i, q in enumerate(quantities)]
    rows.append(["PA-TEA-001", "60", *CANTEEN_1])  # another SKU's quantity does not count
    lines = check(plain_app, write_csv(tmp_path / "order.csv", rows))
    assert [(line.unit_price_fen, line.amount_fen) for line in lines] == [
        *[(price_fen, price_fen * int(q)) for q in quantities],
        (12800, 60 * 12800),
    ]
