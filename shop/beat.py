"""Beat runs once: a beat that does not hold the Redis lock sends nothing.

Two `celery beat` processes started by mistake (on two machines, or twice on one) would each
send every scheduled task. With the broker on Redis, each beat tries on every tick to take or
renew a lock there; only its holder sends. The lock lapses `beat_lock_timeout` seconds after
its holder stops renewing it (killed, machine lost), and another beat takes over.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

import redis
from celery.beat import PersistentScheduler
from redis.exceptions import LockError, RedisError

LOCK_NAME = "shop:beat-lock"
DEFAULT_LOCK_TIMEOUT = 60

logger = logging.getLogger(__name__)


def is_redis_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("redis://", "rediss://"))


class LockedScheduler(PersistentScheduler):
    """PersistentScheduler that sends only while it holds the beat lock in Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conf = self.app.conf
        self.lock_timeout = max(2, int(conf.get("beat_lock_timeout") or DEFAULT_LOCK_TIMEOUT))
        # Renewed on every tick, so a tick must come well inside the lock's lifetime.
        asked = kwargs.get("max_interval") or conf.beat_max_loop_interval or 300
        self.max_interval: float = min(float(asked), self.lock_timeout / 3)
        self.standby_interval = max(0.5, self.lock_timeout / 5)
        url = conf.get("beat_lock_url") or conf.broker_url
        self.lock = redis.Redis.from_url(url, socket_timeout=5).lock(
            LOCK_NAME, timeout=self.lock_timeout, blocking=False, thread_local=False
        )
        self.holding = False
        self.who = f"{socket.gethostname()}:{id(self):x}"

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self.hold_lock():
            return self.standby_interval
        return min(float(super().tick(*args, **kwargs)), self.max_interval)

    def hold_lock(self) -> bool:
        """Renew the lock if held, else try to take it; True while this beat holds it."""
        try:
            held = self.lock.reacquire() if self.holding else self.lock.acquire()
        except LockError:
            held = False
        except RedisError as exc:
            logger.warning("beat lock: Redis unreachable (%s); sending nothing", exc)
            held = False
        if held != self.holding:
            if held:
                logger.info("beat lock: taken by %s; sending the schedule", self.who)
            else:
                logger.warning("beat lock: lost by %s; standing by", self.who)
        elif not held:
            logger.debug("beat lock: held elsewhere; standing by")
        self.holding = bool(held)
        return self.holding

    def close(self) -> None:
        super().close()
        if self.holding:
            with contextlib.suppress(LockError, RedisError):
                self.lock.release()
            self.holding = False


def lock_is_held(url: str) -> bool:
    """Some beat holds the lock (renewed within its timeout): the schedule is being sent."""
    return bool(redis.Redis.from_url(url, socket_timeout=5).exists(LOCK_NAME))


def main() -> int:
    """`python -m shop.beat`: exit 0 while a beat holds the lock (a health check for beat)."""
    from shop.config import load_config

    celery = load_config()["CELERY"]
    url = celery["beat_lock_url"] or celery["broker_url"]
    try:
        held = lock_is_held(url)
    except RedisError as exc:
        print(f"beat lock: Redis unreachable ({exc})")
        return 1
    print("beat lock: held" if held else "beat lock: nobody holds it; no beat is sending")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
