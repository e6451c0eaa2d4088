"""Season windows, certification on a day, and the shipping rule."""

from __future__ import annotations

from datetime import date

from shop.catalog.models import Certification, Product, Supplier
from shop.orders.services import ShippingRule


def product(season: tuple[str | None, str | None] = (None, None), **kw: object) -> Product:
    return Product(
        sku="X",
        name="x",
        name_en="x",
        category="水果",
        pack="1kg",
        price_fen=100,
        season_from=season[0],
        season_to=season[1],
        **kw,
    )


def test_all_year_product_is_always_in_season() -> None:
    assert product().in_season(date(2026, 2, 28))


def test_summer_window_includes_its_ends_and_nothing_outside() -> None:
    mango = product(("06-01", "09-30"))
    assert mango.in_season(date(2026, 6, 1)) and mango.in_season(date(2026, 9, 30))
    assert not mango.in_season(date(2026, 5, 31)) and not mango.in_season(date(2026, 10, 1))


def test_window_that_wraps_the_new_year() -> None:
    winter = product(("11-01", "04-30"))
    assert winter.in_season(date(2026, 12, 31)) and winter.in_season(date(2027, 1, 15))
    assert not winter.in_season(date(2026, 7, 1))


def test_certified_only_while_the_suppliers_certificate_is_valid() -> None:
    supplier = Supplier(name="s", credit_code="x", county_id=1)
    supplier.certifications = [
        Certification(number="C1", valid_from=date(2026, 1, 1), valid_to=date(2026, 12, 31))
    ]
    listed = product(certified=True, supplier=supplier)
    assert listed.certified_on(date(2026, 6, 1))
    assert not listed.certified_on(date(2027, 1, 1))
    assert not product(certified=False, supplier=supplier).certified_on(date(2026, 6, 1))


def test_shipping_is_free_above_the_threshold_but_cold_chain_always_pays() -> None:
    rule = ShippingRule(fee_fen=1000, free_above_fen=9900, cold_chain_surcharge_fen=1500)
    dry, cold = product(cold_chain=False), product(cold_chain=True)
    assert rule.charge(9899, [dry]) == 1000
    assert rule.charge(9900, [dry]) == 0
    assert rule.charge(9900, [dry, cold]) == 1500
    assert rule.charge(100, [cold]) == 2500
