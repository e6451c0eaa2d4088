"""gunicorn settings for the shop: `gunicorn -c deploy/gunicorn.conf.py 'shop:create_app()'`.

Read from the same environment as the shop (/etc/huiqian-shop/env, or docker compose's env_file).
"""

from __future__ import annotations

import multiprocessing
import os

from shop.config import load_config


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


# Loopback by default: nginx on the same host is the only client.
bind = [os.environ.get("GUNICORN_BIND", "") or "127.0.0.1:8000"]

# The usual 2 × cores + 1, capped: each worker keeps its own database pool, so the cap bounds
# the PostgreSQL connections of the web tier (about workers × threads).
workers = min(2 * multiprocessing.cpu_count() + 1, _int("GUNICORN_MAX_WORKERS", 8))

# Threads serve requests that wait on PostgreSQL and Stripe. DATABASE_POOL_SIZE must be ≥ threads,
# or threads queue for a connection (shop/config.py keeps one pooled connection per thread).
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 4)

# Above the slowest request: a Stripe call may take STRIPE_TIMEOUT_SECONDS (10) for each of its
# 1 + STRIPE_MAX_NETWORK_RETRIES (2) tries. nginx's proxy_read_timeout matches.
timeout = 60
graceful_timeout = 30
keepalive = 5

# Logs to stderr (journald or docker collects them), one JSON object a line as the shop writes
# (LOG_FORMAT=text: plain lines). No access log here: the shop logs each request itself, with its
# request id, endpoint and duration; nginx keeps the access log of the host.
accesslog = None
errorlog = "-"
# The shop's own reading of LOG_FORMAT and LOG_LEVEL, so gunicorn's lines match the app's.
_logs = load_config()
loglevel = _logs["LOG_LEVEL"].lower()
if _logs["LOG_FORMAT"] == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shop.observability.logs.json_formatter"}},
        "handlers": {
            "error_console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
        },
        # The shop puts its own handler on the root logger when the app is built.
        "root": {"handlers": []},
        "loggers": {
            "gunicorn.error": {"handlers": ["error_console"], "propagate": False},
        },
    }

# Metrics: with PROMETHEUS_MULTIPROC_DIR set (a directory of this host, emptied when the host
# boots: /run/huiqian-shop/metrics in the units), every worker writes its counters there and
# /metrics adds up all of them, the Celery workers' of this host included.

# gunicorn honours X-Forwarded-Proto only from these addresses: the local nginx. The shop itself
# trusts X-Forwarded-For/-Proto only with PROXY_FIX_HOPS=1.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "") or "127.0.0.1,::1"

# Each worker builds its own app after the fork: no database connection or Redis socket is
# shared between processes, and a graceful reload (SIGHUP) loads new code.
preload_app = False

# gunicorn 27 opens a control socket in $HOME; the units reload with signals instead. Older
# versions ignore the unknown setting.
control_socket_disable = True
