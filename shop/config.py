"""Settings read from the environment; secrets have no production default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

INSTANCE_DIR = Path(os.environ.get("SHOP_INSTANCE_DIR", Path.cwd() / "var"))

# Keys of the embedded Stripe emulator: test-mode by construction, useless against real Stripe.
# The emulator's public test key.
EMULATOR_SECRET_KEY = "sk_test_emulator"  # nosec B105
# The emulator's public test secret.
EMULATOR_WEBHOOK_SECRET = "whsec_emulator"  # nosec B105
EMULATOR_API_BASE = "http://127.0.0.1:12111"

REQUIRED_IN_PRODUCTION = (
    "SECRET_KEY",
    "DATABASE_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
)


class ConfigError(RuntimeError):
    """The environment does not describe a runnable shop."""


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} must be a whole number, got {raw!r}") from exc


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from exc


def _choice(env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    """One of `allowed` (written in any case)."""
    raw = env.get(key) or default
    value = next((choice for choice in allowed if choice.lower() == raw.lower()), None)
    if value is None:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {raw!r}")
    return value


def load_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the Flask config mapping from environment variables (see the README's table)."""
    env = os.environ if env is None else env
    shop_env = env.get("SHOP_ENV", "development")
    production = shop_env == "production"
    if production:
        missing = [key for key in REQUIRED_IN_PRODUCTION if not env.get(key)]
        if missing:
            raise ConfigError("production needs these settings: " + ", ".join(missing))

    if _int(env, "WORKER_METRICS_PORT", 0) and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        raise ConfigError(
            "WORKER_METRICS_PORT needs PROMETHEUS_MULTIPROC_DIR: a worker's pool processes count"
            " the tasks, and the shared directory is how its main process sees their counts"
        )

    default_db = f"sqlite:///{INSTANCE_DIR / 'shop.sqlite3'}"
    broker = env.get("CELERY_BROKER_URL", "")
    stripe_key = env.get("STRIPE_SECRET_KEY", EMULATOR_SECRET_KEY)
    # Real keys talk to real Stripe unless an API base is given; the emulator keys never do.
    default_api_base = EMULATOR_API_BASE if stripe_key == EMULATOR_SECRET_KEY else ""
    return {
        "SHOP_ENV": shop_env,
        "SECRET_KEY": env.get("SECRET_KEY", "development-only-not-secret"),
        "SQLALCHEMY_DATABASE_URI": env.get("DATABASE_URL", default_db),
        "SQLALCHEMY_ENGINE_OPTIONS": {
            # Off by default: a ping is a round trip on every request. A connection the server
            # dropped then fails one request and is replaced; turn it on where that is rarer than
            # the cost (e.g. behind a proxy that closes idle connections).
            "pool_pre_ping": env.get("DATABASE_PRE_PING", "") in ("1", "true", "yes"),
            "pool_recycle": 1800,
            # One connection per serving thread, so that threads never queue for the pool.
            "pool_size": _int(env, "DATABASE_POOL_SIZE", 10),
            "max_overflow": 10,
        },
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": production,
        # Proxies in front that set X-Forwarded-For/-Proto (1 behind one nginx); 0 trusts none.
        "PROXY_FIX_HOPS": _int(env, "PROXY_FIX_HOPS", 0),
        "SHOP_BASE_URL": env.get("SHOP_BASE_URL", "http://127.0.0.1:5000").rstrip("/"),
        "STRIPE_SECRET_KEY": stripe_key,
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET", EMULATOR_WEBHOOK_SECRET),
        "STRIPE_API_BASE": env.get("STRIPE_API_BASE", default_api_base),
        "STRIPE_TIMEOUT_SECONDS": _float(env, "STRIPE_TIMEOUT_SECONDS", 10.0),
        "STRIPE_MAX_NETWORK_RETRIES": _int(env, "STRIPE_MAX_NETWORK_RETRIES", 2),
        "STRIPE_PAYMENT_METHODS": [
            m.strip()
            for m in env.get("STRIPE_PAYMENT_METHODS", "card,wechat_pay").split(",")
            if m.strip()
        ],
        "STRIPE_WEBHOOK_TOLERANCE_SECONDS": _int(env, "STRIPE_WEBHOOK_TOLERANCE_SECONDS", 300),
        "ORDER_PAYMENT_MINUTES": _int(env, "ORDER_PAYMENT_MINUTES", 30),
        "SHIPPING_FEE_FEN": _int(env, "SHIPPING_FEE_FEN", 1000),
        "SHIPPING_FREE_ABOVE_FEN": _int(env, "SHIPPING_FREE_ABOVE_FEN", 9900),
        "COLD_CHAIN_SURCHARGE_FEN": _int(env, "COLD_CHAIN_SURCHARGE_FEN", 1500),
        "ORDER_MAX_QUANTITY": _int(env, "ORDER_MAX_QUANTITY", 10000),
        "CATALOG_PAGE_SIZE": _int(env, "CATALOG_PAGE_SIZE", 20),
        "RATELIMIT_STORAGE_URI": env.get("RATELIMIT_STORAGE_URI", "memory://"),
        # Every attempt per client address; failed attempts per account (e-mail).
        "LOGIN_RATE_LIMIT": env.get("LOGIN_RATE_LIMIT", "10 per minute"),
        "LOGIN_ACCOUNT_RATE_LIMIT": env.get(
            "LOGIN_ACCOUNT_RATE_LIMIT", "5 per minute; 20 per hour"
        ),
        "API_TOKEN_DAYS": _int(env, "API_TOKEN_DAYS", 90),
        # Largest request body: a bulk file (at most 5 MB, shop.spreadsheets) and its form.
        # Werkzeug answers a larger one with 413 before any of it is parsed.
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 6 * 1024 * 1024),
        # Form fields without a file: a previewed 10,000-row order travels back to be saved in
        # one (compressed), which can pass Flask's 500 KB default; the body limit bounds it.
        "MAX_FORM_MEMORY_SIZE": _int(env, "MAX_CONTENT_LENGTH", 6 * 1024 * 1024),
        # Shared by every web and worker process: export files, uploaded counter-sales files.
        "EXPORT_DIR": Path(env.get("EXPORT_DIR", INSTANCE_DIR / "exports")),
        "UPLOAD_DIR": Path(env.get("UPLOAD_DIR", INSTANCE_DIR / "uploads")),
        # Reconciliation re-reads this much before its stored cursor, for objects Stripe
        # created earlier and changed since (a Checkout Session paid an hour after it opened).
        "RECONCILE_OVERLAP_SECONDS": _int(env, "RECONCILE_OVERLAP_SECONDS", 86400),
        # One JSON object a line (journald, docker, a log shipper), or plain text to read in a
        # terminal (the default outside production).
        "LOG_FORMAT": _choice(
            env, "LOG_FORMAT", "json" if production else "text", ("json", "text")
        ),
        "LOG_LEVEL": _choice(
            env, "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        ),
        # Set, /metrics wants `Authorization: Bearer <token>`; empty, it is open (nginx keeps it
        # to the host).
        "METRICS_TOKEN": env.get("METRICS_TOKEN", ""),
        "BABEL_DEFAULT_LOCALE": "zh",
        "BABEL_DEFAULT_TIMEZONE": "Asia/Shanghai",
        "SHOP_LOCALES": ["zh", "en"],
        "CELERY": {
            "broker_url": broker or "memory://",
            "result_backend": env.get("CELERY_RESULT_BACKEND", "") or None,
            # Without a broker the demo runs tasks in-process, synchronously.
            "task_always_eager": not broker,
            "task_eager_propagates": True,
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            # With late acks, a worker holds one task at a time, not a batch it might lose.
            "worker_prefetch_multiplier": 1,
            # Redis redelivers a task nobody acknowledged after this long: longer than the
            # longest task, or a slow task would run twice at once.
            "broker_transport_options": {
                "visibility_timeout": _int(env, "CELERY_VISIBILITY_TIMEOUT", 7200)
            },
            # Celery retries an unreachable result store 20 times, a second apart: a request
            # waiting on a task would hang for that long before its 503. Results here are only
            # waited for by a person (reconcile now, an upload); a lost one costs nothing.
            "result_backend_transport_options": {"retry_policy": {"max_retries": 3}},
            "timezone": "Asia/Shanghai",
            "enable_utc": True,
            # Beat's lock (shop/beat.py): in the broker's Redis unless given; a beat killed
            # holding it is replaced after this many seconds.
            "beat_lock_url": env.get("BEAT_LOCK_URL", "") or None,
            "beat_lock_timeout": _int(env, "BEAT_LOCK_TIMEOUT", 60),
            # A worker's own /metrics on this port (0: none), for hosts without a web process.
            "worker_metrics_port": _int(env, "WORKER_METRICS_PORT", 0),
            "worker_metrics_address": env.get("WORKER_METRICS_ADDRESS", "") or "127.0.0.1",
        },
    }
