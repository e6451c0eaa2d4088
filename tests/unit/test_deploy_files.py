"""The files in deploy/ agree with the code: every setting documented, gunicorn's config loads,
the compose file parses, and the systemd units and compose services start commands that exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from shop.background import QUEUES
from shop.cli import register_commands
from shop.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / ".env.example"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
BIN = Path(sys.executable).parent

VARIABLE = re.compile(r"^[A-Z][A-Z0-9_]*$")
COMPOSE_INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)")
# `NAME=value`, or `#NAME=value` for a variable documented but left unset.
ENV_LINE = re.compile(r"^#?([A-Z][A-Z0-9_]*)=(.*)$")


def is_environment(node: ast.expr) -> bool:
    """`env` (shop/config.py's mapping), `os.environ` or `environ`."""
    if isinstance(node, ast.Name):
        return node.id in {"env", "environ"}
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def reads_environment(node: ast.AST) -> list[ast.expr]:
    """The arguments of a read: env.get("X"), os.environ.get("X"), os.environ["X"],
    os.getenv("X"), and the helpers _int(env, "X") / _float(env, "X") / _choice(env, "X")
    (_int("X", 8) in deploy/gunicorn.conf.py)."""
    if isinstance(node, ast.Subscript) and is_environment(node.value):
        return [node.slice]
    if not isinstance(node, ast.Call):
        return []
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "get" and is_environment(func.value):
        return node.args[:1]
    if isinstance(func, ast.Attribute) and func.attr == "getenv":
        return node.args[:1]
    if isinstance(func, ast.Name) and func.id in {"_int", "_float", "_choice"}:
        return node.args[:2]
    return []


def variables_read(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        for arg in reads_environment(node):
            if isinstance(arg, ast.Constant) and VARIABLE.match(str(arg.value)):
                names.add(str(arg.value))
    return names


def config_variables() -> set[str]:
    return variables_read(ROOT / "shop" / "config.py")


def variables_read_anywhere() -> set[str]:
    sources = [*(ROOT / "shop").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]
    names = variables_read(DEPLOY / "gunicorn.conf.py")
    for path in sources:
        text = path.read_text(encoding="utf-8")
        if "environ" in text or "getenv" in text:
            names |= variables_read(path)
    compose = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    return names | set(COMPOSE_INTERPOLATION.findall(compose))


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    values: dict[str, str] = {}
    for number, line in enumerate(lines):
        match = ENV_LINE.match(line)
        if not match:
            continue
        name, value = match.groups()
        assert name not in values, f"{name} is set twice in .env.example"
        above = lines[number - 1] if number else ""
        assert above.startswith("# "), f"{name} in .env.example has no comment line above it"
        # Quoted where a value has spaces, as sh and systemd's EnvironmentFile= both read it.
        values[name] = value[1:-1] if value[:1] == value[-1:] == '"' and len(value) > 1 else value
    return values


def test_env_example_reads_the_same_in_sh_as_for_systemd() -> None:
    """The README starts processes by hand with `set -a; . /etc/huiqian-shop/env`."""
    script = 'set -a; . "$1"; set +a; env -0'
    done = subprocess.run(
        ["sh", "-c", script, "sh", str(ENV_EXAMPLE)],
        env={"PATH": os.environ.get("PATH", "")},
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr.decode()
    sourced = dict(item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    commented = {m.group(1) for line in lines if line[:1] == "#" and (m := ENV_LINE.match(line))}
    for name, value in env_example().items():
        assert sourced.get(name) == (None if name in commented else value), name


def readme_table_variables() -> set[str]:
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", first_cell))
    return names


def test_every_setting_the_shop_reads_is_in_env_example_and_in_the_readme() -> None:
    read = config_variables()
    # The pattern still sees each way shop/config.py reads: plain, integer, float, at import.
    seen = {"SECRET_KEY", "LOGIN_ACCOUNT_RATE_LIMIT", "API_TOKEN_DAYS", "STRIPE_TIMEOUT_SECONDS"}
    assert seen | {"SHOP_INSTANCE_DIR"} <= read
    assert sorted(read - set(env_example())) == [], "missing from deploy/.env.example"
    assert sorted(read - readme_table_variables()) == [], "missing from the README's table"


def test_env_example_holds_only_variables_something_reads() -> None:
    values = env_example()
    assert sorted(set(values) - variables_read_anywhere()) == [], "stale in deploy/.env.example"
    assert values["SHOP_ENV"] == "production"


def test_env_example_secrets_are_placeholders_and_production_passes_the_check() -> None:
    values = env_example()
    for name in ("SECRET_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "POSTGRES_PASSWORD"):
        assert "REPLACE_ME" in values[name], name
    assert "REPLACE_ME" in values["DATABASE_URL"]
    config = load_config(values)
    assert config["STRIPE_API_BASE"] == ""  # real Stripe, not the emulator
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["PROXY_FIX_HOPS"] == 1
    assert config["SQLALCHEMY_ENGINE_OPTIONS"]["pool_size"] >= int(values["GUNICORN_THREADS"])


def test_nginx_passes_the_webhook_through_and_limits_bodies_like_the_shop() -> None:
    site = (DEPLOY / "nginx" / "huiqian-shop.conf").read_text(encoding="utf-8")
    size = re.search(r"^\s*client_max_body_size\s+(\d+)m;", site, re.MULTILINE)
    assert size is not None
    limit = int(size.group(1)) * 1024 * 1024
    assert limit == load_config({})["MAX_CONTENT_LENGTH"]
    assert limit == int(env_example()["MAX_CONTENT_LENGTH"])
    webhook = re.search(r"location = /api/v1/stripe/webhook \{(.*?)\}", site, re.DOTALL)
    assert webhook is not None
    assert "proxy_request_buffering off;" in webhook.group(1)
    assert "rewrite" not in webhook.group(1)
    assert re.search(r"proxy_pass http://\w+;", webhook.group(1))  # no URI: the path as it came
    assert "X-Forwarded-For" in site and "X-Forwarded-Proto $scheme" in site
    assert "return 301 https://" in site


def unit_lines(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_gunicorn_config_loads_with_the_app(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "SHOP_INSTANCE_DIR": str(tmp_path),
        "GUNICORN_BIND": "127.0.0.1:8123",
        "GUNICORN_MAX_WORKERS": "1",
        "GUNICORN_THREADS": "3",
        "LOG_FORMAT": "json",
    }
    argv = [sys.executable, "-m", "gunicorn", "--check-config", "--print-config"]
    argv += ["-c", str(DEPLOY / "gunicorn.conf.py"), "wsgi:app"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = dict(
        (key.strip(), value.strip())
        for key, value in (line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    )
    assert printed["bind"] == "['127.0.0.1:8123']"
    assert printed["workers"] == "1"
    assert printed["threads"] == "3"
    assert printed["worker_class"] == "gthread"
    assert printed["preload_app"] == "False"
    # The shop logs each request itself (with its request id); gunicorn's lines are JSON too.
    assert printed["accesslog"] == "None"
    assert "shop.observability.logs.json_formatter" in printed["logconfig_dict"]
    assert printed["forwarded_allow_ips"] == "['127.0.0.1', '::1']"


def shop_commands() -> set[tuple[str, ...]]:
    app = Flask("commands")
    register_commands(app)
    found: set[tuple[str, ...]] = set()
    for name, command in app.cli.commands.items():
        found.add((name,))
        for sub in getattr(command, "commands", {}):
            found.add((name, sub))
    return found


def assert_command_exists(argv: list[str]) -> None:
    """The program is a console script of this environment and what it is told to load exists."""
    program = Path(argv[0]).name
    assert program in {"gunicorn", "celery", "shop"}, argv
    assert (BIN / program).exists(), f"{program} is not installed in {BIN}"
    if program == "gunicorn":
        module, _, attribute = argv[-1].partition(":")
        assert callable(getattr(importlib.import_module(module), attribute.removesuffix("()")))
    elif program == "celery":
        assert importlib.util.find_spec(argv[argv.index("-A") + 1]) is not None
        words = [word for word in argv[argv.index("-A") + 2 :] if not word.startswith("-")]
        assert words[0] in {"worker", "beat"}, argv
        # Celery's start-up banner goes to stdout, which journald logs beside the JSON lines.
        assert "--quiet" in argv
    else:
        words = tuple(word for word in argv[1:] if not word.startswith("-"))
        assert words[:2] in shop_commands() or words[:1] in shop_commands(), argv


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_systemd_unit_runs_a_real_command_as_its_user_with_hardening(unit: Path) -> None:
    keys = unit_lines(unit)
    for required in ("ExecStart", "User", "EnvironmentFile", "Restart"):
        assert required in keys, f"{unit.name} has no {required}="
    assert keys["EnvironmentFile"] == ["/etc/huiqian-shop/env"]
    assert keys["User"] != ["root"]
    assert keys["Restart"] == ["on-failure"]
    assert keys["NoNewPrivileges"] == ["yes"]
    assert keys["ProtectSystem"] == ["strict"]
    assert keys["PrivateTmp"] == ["yes"]
    writable = [Path(p) for value in keys["ReadWritePaths"] for p in value.split()]
    settings = env_example()
    needed = [settings[name] for name in ("SHOP_INSTANCE_DIR", "EXPORT_DIR", "UPLOAD_DIR")]
    argv = shlex.split(keys["ExecStart"][0])
    needed += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--schedule=")]
    for path in needed:
        assert any(Path(path).is_relative_to(w) for w in writable), f"{path} is read-only"
    assert_command_exists(argv)
    # The processes of the host share one metrics directory, which any of them may create first
    # and which lasts until reboot.
    metrics = Path(settings["PROMETHEUS_MULTIPROC_DIR"])
    assert [Path("/run") / d for d in keys["RuntimeDirectory"]] == [metrics]
    assert keys["RuntimeDirectoryPreserve"] == ["yes"]


def test_systemd_units_are_web_a_worker_template_and_beat() -> None:
    names = {unit.name for unit in UNITS}
    assert names == {"huiqian-web.service", "huiqian-worker@.service", "huiqian-beat.service"}
    (worker,) = unit_lines(DEPLOY / "systemd" / "huiqian-worker@.service")["ExecStart"]
    assert "--queues=%I" in worker.split()


def compose_commands(compose: dict[str, Any]) -> list[list[str]]:
    commands = []
    for service in ("web", "worker", "beat"):
        argv = compose["services"][service].get("command")
        if argv is None:
            continue
        if argv[:2] == ["sh", "-c"]:
            commands += [shlex.split(part) for part in argv[2].split("&&")]
        else:
            commands.append(argv)
    return [[word for word in argv if word != "exec"] for argv in commands]


def has_docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return version.returncode == 0


def test_compose_file_parses_with_health_checks_and_shared_files() -> None:
    path = DEPLOY / "docker-compose.yml"
    try:
        import yaml
    except ImportError:
        if not has_docker_compose():
            pytest.skip("neither PyYAML nor docker compose is installed to read the compose file")
        env = {**os.environ, "POSTGRES_PASSWORD": "x"}
        done = subprocess.run(
            ["docker", "compose", "-f", str(path), "config", "-q"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return
    compose = yaml.safe_load(path.read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "web", "worker", "beat"}
    for name in services:
        assert "healthcheck" in services[name], name
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"
    for name in ("web", "worker", "beat"):
        conditions = {dep["condition"] for dep in services[name]["depends_on"].values()}
        assert conditions == {"service_healthy"}, name
    files = Path(services["web"]["environment"]["EXPORT_DIR"]).parent
    assert Path(services["web"]["environment"]["UPLOAD_DIR"]).parent == files
    for name in ("web", "worker"):
        assert any(volume.endswith(f":{files}") for volume in services[name]["volumes"]), name
    for argv in compose_commands(compose):
        assert_command_exists(argv)
    worker = services["worker"]["command"]
    (queues,) = [arg.split("=", 1)[1] for arg in worker if arg.startswith("--queues=")]
    assert set(queues.split(",")) == set(QUEUES), "a queue no worker consumes"
    # The env file names a host directory for metrics; each container that counts has its own
    # tmpfs instead (process ids of different containers would collide), beat none.
    for name in ("web", "worker"):
        directory = services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert directory in services[name]["tmpfs"], name
    assert services["beat"]["environment"]["PROMETHEUS_MULTIPROC_DIR"] == ""
