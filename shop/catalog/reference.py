"""Reference data every shop needs, demo or not: Qianxinan's counties (GB/T 2260 codes), Huizhou's
districts and functional zones, and the official pairings between them.

`shop reference load` adds whatever is missing (a fresh production database has none of it, and
neither suppliers nor delivery addresses can be entered without it); run again, it adds nothing.
"""

from __future__ import annotations

from sqlalchemy import select

from shop.catalog.models import County, District, Pairing
from shop.db import DbSession

COUNTIES = [  # code, name, English, cooperation county
    ("522301", "兴义市", "Xingyi City", False),
    ("522302", "兴仁市", "Xingren City", True),
    ("522323", "普安县", "Pu'an County", True),
    ("522324", "晴隆县", "Qinglong County", True),
    ("522325", "贞丰县", "Zhenfeng County", True),
    ("522326", "望谟县", "Wangmo County", True),
    ("522327", "册亨县", "Ceheng County", True),
    ("522328", "安龙县", "Anlong County", True),
]

DISTRICTS = [  # code (functional zones have no GB/T 2260 code), name, English, functional zone
    ("441302", "惠城区", "Huicheng District", False),
    ("441303", "惠阳区", "Huiyang District", False),
    ("441322", "博罗县", "Boluo County", False),
    ("441323", "惠东县", "Huidong County", False),
    ("441324", "龙门县", "Longmen County", False),
    ("HZ-DYW", "大亚湾开发区", "Daya Bay Development Zone", True),
    ("HZ-ZK", "仲恺高新区", "Zhongkai High-tech Zone", True),
]

PAIRINGS = [  # district, county
    ("龙门县", "普安县"),
    ("惠东县", "望谟县"),
]


def add_pairings(session: DbSession, pairs: list[tuple[str, str]], *, demo: bool) -> int:
    """Pair districts with counties by name, where not paired yet; returns how many were added."""
    counties = {c.name: c for c in session.scalars(select(County))}
    districts = {d.name: d for d in session.scalars(select(District))}
    paired = {(p.district_id, p.county_id) for p in session.scalars(select(Pairing))}
    added = 0
    for district, county in pairs:
        if (districts[district].id, counties[county].id) not in paired:
            session.add(Pairing(district=districts[district], county=counties[county], demo=demo))
            added += 1
    session.flush()
    return added


def load_reference_data(session: DbSession) -> int:
    """Add the counties, districts and official pairings that are missing; returns how many."""
    known_counties = set(session.scalars(select(County.code)))
    known_districts = set(session.scalars(select(District.code)))
    new = [
        County(code=code, name=name, name_en=en, cooperation=coop)
        for code, name, en, coop in COUNTIES
        if code not in known_counties
    ] + [
        District(code=code, name=name, name_en=en, functional_zone=zone)
        for code, name, en, zone in DISTRICTS
        if code not in known_districts
    ]
    session.add_all(new)
    session.flush()
    return len(new) + add_pairings(session, PAIRINGS, demo=False)
