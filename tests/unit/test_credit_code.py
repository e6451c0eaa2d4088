"""统一社会信用代码 checksum."""

from __future__ import annotations

import pytest

from shop.catalog.credit_code import check_character, is_valid_credit_code
from shop.demo import SUPPLIERS, demo_credit_code


def test_accepts_the_standards_published_example() -> None:
    assert is_valid_credit_code("91350100M000100Y43")


@pytest.mark.parametrize(
    "code",
    ["91350100M000100Y44", "91350100M000100Y4", "91350100M000100Y433", "91350100M000100I43", ""],
)
def test_refuses_wrong_check_character_length_or_alphabet(code: str) -> None:
    assert not is_valid_credit_code(code)


def test_lower_case_and_spaces_are_tolerated() -> None:
    assert is_valid_credit_code(" 91350100m000100y43 ")


def test_check_character_is_zero_when_the_sum_is_a_multiple_of_31() -> None:
    assert check_character("0" * 17) == "0"


def test_every_demo_supplier_has_a_valid_code() -> None:
    codes = [
        demo_credit_code(reg, "522323", serial)
        for serial, (_, _, _, reg, _, _) in enumerate(SUPPLIERS, 1)
    ]
    assert all(is_valid_credit_code(c) for c in codes)
    assert len(set(codes)) == len(codes)
