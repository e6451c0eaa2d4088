"""Counter sales (消费帮扶专柜) imported from CSV or xlsx as `offline` ledger entries."""

from __future__ import annotations

from shop.accounts.models import User
from shop.db import DbSession
from shop.ledger.models import OfflineImport


def import_offline_sales(
    session: DbSession, data: bytes, filename: str, actor: User | None
) -> tuple[OfflineImport, bool]:
    raise NotImplementedError
