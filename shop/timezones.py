"""Shanghai local time, which every report and order number is read in."""

from datetime import date, datetime
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


def shanghai_today(now: datetime) -> date:
    return now.astimezone(SHANGHAI).date()
