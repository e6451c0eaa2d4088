"""Demo data: suppliers, products, accounts and a unit, over the reference data (the eight
Qianxinan counties and Huizhou's districts, shop.catalog.reference). Pairings marked `demo` are
illustrative, not official.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from shop.accounts.models import Role, User
from shop.accounts.services import create_user
from shop.catalog.credit_code import check_character
from shop.catalog.models import (
    Category,
    Certification,
    County,
    District,
    Product,
    Supplier,
    TierPrice,
)
from shop.catalog.reference import COUNTIES, add_pairings, load_reference_data
from shop.db import DbSession

# Demo accounts, printed by `shop demo`.
DEMO_PASSWORD = "demo-password"  # nosec B105
DEMO_ACCOUNTS = [
    ("buyer@example.com", "张小惠", Role.BUYER),
    ("admin@example.com", "李运营", Role.ADMIN),
    ("finance@example.com", "王财务", Role.FINANCE),
    ("officer@example.com", "陈采购", Role.BUYER),
    ("approver@example.com", "刘审批", Role.BUYER),
]

DEMO_UNIT = {
    "name": "惠州市惠城区机关事务服务中心",
    "type": "机关事业单位",
    "district": "惠城区",
    "reserved_target_fen": 50_000_000,
    "invoice_title": "惠州市惠城区机关事务服务中心",
    "payment_terms_days": 30,
    "dual_approval_above_fen": 5_000_000,
}
DEMO_MEMBERS = [("officer@example.com", "requester"), ("approver@example.com", "approver")]

# Unit-procurement rules: sku → (minimum, increment, ((from quantity, price fen), …))
UNIT_RULES = {
    "PA-TEA-001": (10, 1, ((50, 11800), (200, 10800))),
    "XR-YR-001": (10, 5, ((50, 5400), (200, 4900))),
    "ZF-NM-001": (10, 5, ((50, 4500), (200, 4200))),
    "WM-MG-001": (20, 10, ((100, 8200),)),
    "CH-NM-001": (10, 5, ((100, 4300),)),
}

# Illustrative pairings beside the official ones (shop.catalog.reference), for the demo only.
DEMO_PAIRINGS = [
    ("惠城区", "兴仁市"),
    ("惠阳区", "贞丰县"),
    ("博罗县", "晴隆县"),
    ("大亚湾开发区", "册亨县"),
    ("仲恺高新区", "安龙县"),
]

SUPPLIERS = [  # key, name, county, registration type, households lifted, certificate valid to
    ("pa-coop", "普安县江西坡茶叶专业合作社", "普安县", "93", 126, date(2027, 12, 31)),
    ("pa-tea", "贵州普安红茶业有限公司", "普安县", "91", 310, date(2027, 12, 31)),
    ("wm-mango", "望谟县芒果种植专业合作社", "望谟县", "93", 218, date(2027, 6, 30)),
    ("wm-food", "贵州望谟板陈农业发展有限公司", "望谟县", "91", 95, date(2027, 12, 31)),
    ("ql-agri", "晴隆县农投食品有限公司", "晴隆县", "91", 140, date(2027, 12, 31)),
    ("zf-coop", "贞丰县顶坛花椒专业合作社", "贞丰县", "93", 88, date(2027, 12, 31)),
    ("xr-yiren", "兴仁市薏仁米产业有限公司", "兴仁市", "91", 260, date(2027, 12, 31)),
    ("ch-coop", "册亨县布依糯米蕉专业合作社", "册亨县", "93", 73, date(2027, 12, 31)),
    ("al-fungi", "安龙县食用菌开发有限公司", "安龙县", "91", 152, date(2027, 12, 31)),
    ("xy-food", "兴义市黔味特色食品有限公司", "兴义市", "91", None, date(2025, 12, 31)),
]

T, F, V, G, M, P, OT = (
    Category.TEA,
    Category.FRUIT,
    Category.VEGETABLE,
    Category.GRAIN_OIL,
    Category.MEAT_EGG,
    Category.PROCESSED,
    Category.OTHER,
)
ALL_YEAR = (None, None)
# fmt: off
PRODUCTS = [  # sku, name, English, category, supplier, pack, price fen, stock, season, certified, cold
    ("PA-TEA-001", "普安红茶（特级）", "Pu'an black tea, special grade", T, "pa-tea", "250g/罐", 12800, 600, ALL_YEAR, True, False),
    ("PA-TEA-002", "普安早春绿茶", "Pu'an early-spring green tea", T, "pa-coop", "100g/袋", 6800, 800, ALL_YEAR, True, False),
    ("PA-TEA-003", "普安古茶树红茶礼盒", "Pu'an ancient-tree black tea gift box", T, "pa-tea", "500g/盒", 39800, 150, ALL_YEAR, True, False),
    ("PA-TEA-004", "普安白茶", "Pu'an white tea", T, "pa-coop", "150g/罐", 15800, 300, ALL_YEAR, True, False),
    ("PA-TEA-005", "普安红茶袋泡茶", "Pu'an black tea bags", T, "pa-tea", "2g×30袋/盒", 4800, 1200, ALL_YEAR, True, False),
    ("QL-TEA-001", "晴隆高山绿茶", "Qinglong highland green tea", T, "ql-agri", "200g/袋", 8800, 400, ALL_YEAR, True, False),
    ("WM-MG-001", "望谟芒果（大果）", "Wangmo mango, large", F, "wm-mango", "5kg/箱", 8900, 2000, ("06-01", "09-30"), True, True),
    ("WM-MG-002", "望谟芒果精品礼盒", "Wangmo mango gift box", F, "wm-mango", "3kg/盒", 9800, 800, ("06-01", "09-30"), True, True),
    ("ZF-LI-001", "贞丰蜂糖李", "Zhenfeng honey plum", F, "zf-coop", "2.5kg/箱", 7900, 500, ("06-15", "07-31"), True, True),
    ("ZF-PT-001", "贞丰红心火龙果", "Zhenfeng red dragon fruit", F, "zf-coop", "2.5kg/箱", 6900, 600, ("07-01", "11-30"), True, True),
    ("CH-BN-001", "册亨糯米蕉", "Ceheng glutinous banana", F, "ch-coop", "5kg/箱", 5900, 700, ALL_YEAR, True, True),
    ("QL-FR-001", "晴隆百香果", "Qinglong passion fruit", F, "ql-agri", "3kg/箱", 4900, 600, ("07-01", "12-31"), True, True),
    ("AL-MS-001", "安龙香菇（干）", "Anlong dried shiitake", V, "al-fungi", "500g/袋", 5800, 900, ALL_YEAR, True, False),
    ("AL-MS-002", "安龙黑木耳", "Anlong black fungus", V, "al-fungi", "250g/袋", 3900, 900, ALL_YEAR, True, False),
    ("WM-VG-001", "望谟冬早蔬菜礼盒", "Wangmo winter vegetable box", V, "wm-food", "5kg/箱", 6800, 400, ("11-01", "04-30"), True, True),
    ("XY-VG-001", "兴义高山土豆", "Xingyi highland potatoes", V, "xy-food", "10kg/箱", 4500, 500, ("07-01", "02-28"), True, False),
    ("CH-VG-001", "册亨铁棍山药", "Ceheng yam", V, "ch-coop", "5kg/箱", 5600, 300, ("10-01", "03-31"), True, False),
    ("XR-YR-001", "兴仁薏仁米", "Xingren job's tears", G, "xr-yiren", "2.5kg/袋", 5900, 1500, ALL_YEAR, True, False),
    ("XR-YR-002", "兴仁薏仁米礼盒", "Xingren job's tears gift box", G, "xr-yiren", "1kg×2/盒", 8800, 600, ALL_YEAR, True, False),
    ("QL-NY-001", "晴隆糯薏仁", "Qinglong glutinous job's tears", G, "ql-agri", "1kg/袋", 3600, 800, ALL_YEAR, True, False),
    ("ZF-NM-001", "贞丰糯米", "Zhenfeng glutinous rice", G, "zf-coop", "5kg/袋", 4800, 1000, ALL_YEAR, True, False),
    ("CH-NM-001", "册亨布依糯米", "Ceheng Buyei glutinous rice", G, "ch-coop", "5kg/袋", 4600, 1000, ALL_YEAR, True, False),
    ("PA-YC-001", "普安压榨菜籽油", "Pu'an pressed rapeseed oil", G, "pa-coop", "5L/桶", 9800, 400, ALL_YEAR, False, False),
    ("QL-YR-001", "晴隆羊肉（冷冻）", "Qinglong mutton, frozen", M, "ql-agri", "2kg/袋", 16800, 200, ALL_YEAR, True, True),
    ("AL-EG-001", "安龙林下土鸡蛋", "Anlong free-range eggs", M, "al-fungi", "30枚/盒", 5800, 400, ALL_YEAR, True, False),
    ("XR-NG-001", "兴仁牛干巴", "Xingren dried beef", M, "xr-yiren", "500g/袋", 12800, 300, ALL_YEAR, True, False),
    ("ZF-HJ-001", "贞丰顶坛花椒", "Zhenfeng Dingtan Sichuan pepper", P, "zf-coop", "250g/罐", 3900, 700, ALL_YEAR, True, False),
    ("ZF-NF-001", "贞丰即食糯米饭", "Zhenfeng ready-to-eat sticky rice", P, "zf-coop", "300g×6/箱", 4800, 600, ALL_YEAR, True, False),
    ("XY-EK-001", "兴义饵块粑", "Xingyi rice cakes", P, "xy-food", "2kg/箱", 3800, 500, ALL_YEAR, True, False),
    ("WM-MG-003", "望谟芒果干", "Wangmo dried mango", P, "wm-mango", "200g/袋", 2800, 1500, ALL_YEAR, True, False),
    ("WM-BL-001", "望谟板栗仁", "Wangmo chestnut kernels", P, "wm-food", "500g/袋", 3500, 800, ALL_YEAR, True, False),
    ("AL-BJ-001", "安龙白及粉", "Anlong bletilla powder", OT, "al-fungi", "100g/罐", 6800, 200, ALL_YEAR, False, False),
    ("CH-FM-001", "册亨野生蜂蜜", "Ceheng wild honey", OT, "ch-coop", "500g/瓶", 8800, 300, ALL_YEAR, True, False),
]
# fmt: on


def demo_credit_code(registration: str, county_code: str, serial: int) -> str:
    body = f"{registration}{county_code}MA{serial:06d}"[:16] + "X"
    return body + check_character(body)


def load_demo_data(session: DbSession) -> bool:
    """Add the demo catalogue and accounts where missing; True if anything was added."""
    added = _load_accounts(session)
    if session.scalar(select(Supplier.id).limit(1)) is not None:
        return added
    load_reference_data(session)
    add_pairings(session, DEMO_PAIRINGS, demo=True)
    counties = {c.name: c for c in session.scalars(select(County))}
    suppliers: dict[str, Supplier] = {}
    for serial, (key, name, county, registration, households, valid_to) in enumerate(SUPPLIERS, 1):
        supplier = Supplier(
            name=name,
            county=counties[county],
            households_lifted=households,
            credit_code=demo_credit_code(
                registration, next(c for c, n, *_ in COUNTIES if n == county), serial
            ),
        )
        supplier.certifications.append(
            Certification(
                number=f"QXN-XFBF-2024-{serial:04d}", valid_from=date(2024, 1, 1), valid_to=valid_to
            )
        )
        suppliers[key] = supplier
    session.add_all(suppliers.values())
    for sku, name, en, category, maker, pack, price, stock, season, certified, cold in PRODUCTS:
        session.add(
            Product(
                sku=sku,
                name=name,
                name_en=en,
                category=category.value,
                supplier=suppliers[maker],
                pack=pack,
                price_fen=price,
                stock=stock,
                season_from=season[0],
                season_to=season[1],
                certified=certified,
                cold_chain=cold,
                description=f"{name}，产自黔西南州{suppliers[maker].county.name}。",
            )
        )
    session.flush()
    for product in session.scalars(select(Product).where(Product.sku.in_(UNIT_RULES))):
        minimum, increment, tiers = UNIT_RULES[product.sku]
        product.min_order_quantity, product.quantity_increment = minimum, increment
        product.tiers = [TierPrice(min_quantity=q, price_fen=p) for q, p in tiers]
    _load_unit(session)
    session.flush()
    return True


def _load_unit(session: DbSession) -> None:
    from shop.procurement.models import Membership, Organisation

    district = session.scalar(select(District).where(District.name == DEMO_UNIT["district"]))
    assert district is not None
    code = demo_credit_code("11", "441302", 1)
    unit = Organisation(
        name=DEMO_UNIT["name"],
        type=DEMO_UNIT["type"],
        credit_code=code,
        district_id=district.id,
        reserved_target_fen=DEMO_UNIT["reserved_target_fen"],
        invoice_title=DEMO_UNIT["invoice_title"],
        tax_id=code,
        default_funding="财政资金",
        payment_terms_days=DEMO_UNIT["payment_terms_days"],
        dual_approval_above_fen=DEMO_UNIT["dual_approval_above_fen"],
    )
    session.add(unit)
    for email, role in DEMO_MEMBERS:
        user = session.scalar(select(User).where(User.email == email))
        assert user is not None
        unit.members.append(Membership(user_id=user.id, role=role))


def _load_accounts(session: DbSession) -> bool:
    added = False
    for email, name, role in DEMO_ACCOUNTS:
        if session.scalar(select(User.id).where(User.email == email)) is None:
            create_user(session, email=email, password=DEMO_PASSWORD, name=name, role=role)
            added = True
    return added


DEMO_SALES_ADDRESSES = [
    ("广东省", "惠州市", "惠城区"),
    ("广东省", "惠州市", "博罗县"),
    ("广东省", "惠州市", "龙门县"),
    ("广东省", "惠州市", "惠东县"),
    ("广东省", "深圳市", "南山区"),
]


def load_demo_sales(session: DbSession, orders: int = 60, seed: int = 2026) -> int:
    """Paid demo orders spread over this year so far, so the finance pages have numbers.

    They go through the same services as real ones (placed, then paid with their ledger
    entries); nothing happens when the ledger already has entries. Demo data only.
    """
    import random
    from datetime import timedelta

    from sqlalchemy import func

    from shop.db import utcnow
    from shop.errors import ShopError
    from shop.ledger.models import LedgerEntry
    from shop.orders.services import Address, RequestedLine, ShippingRule, place_order
    from shop.payments.services import recognise_payment

    if session.scalar(select(func.count(LedgerEntry.id))):
        return 0
    buyer = session.scalar(select(User).where(User.email == "buyer@example.com"))
    if buyer is None:
        return 0
    skus = list(
        session.scalars(select(Product.sku).where(Product.active.is_(True)).order_by(Product.sku))
    )
    # Repeatable demo data, not a secret.
    rng = random.Random(seed)  # nosec B311
    now = utcnow()
    start_of_year = now.replace(month=1, day=1, hour=2, minute=0, second=0, microsecond=0)
    span = (now - start_of_year).total_seconds()
    made = 0
    for _ in range(orders):
        province, city, district = rng.choice(DEMO_SALES_ADDRESSES)
        address = Address("演示买家", "13800138000", province, city, district, "演示地址 1 号")
        lines = [
            RequestedLine(sku, rng.randint(1, 3)) for sku in rng.sample(skus, rng.randint(1, 3))
        ]
        try:
            order = place_order(
                session,
                buyer,
                lines,
                address,
                shipping=ShippingRule(fee_fen=0, free_above_fen=0, cold_chain_surcharge_fen=0),
                payment_minutes=30,
                max_quantity=100,
            )
        except ShopError:
            session.rollback()
            continue
        paid_at = start_of_year + timedelta(seconds=rng.uniform(0, span))
        order.created_at = paid_at - timedelta(minutes=5)
        recognise_payment(
            session,
            order,
            payment_intent=None,
            amount_fen=order.total_fen,
            source="演示数据",
            paid_at=paid_at,
        )
        session.commit()
        made += 1
    return made
