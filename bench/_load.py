"""What the bench scripts share: a fresh `bench` database, the served processes, and the load."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, make_url, text

from shop.config import EMULATOR_SECRET_KEY, EMULATOR_WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
DATABASE = "bench"
DATABASE_URL = f"postgresql+psycopg://postgres@{HOST}:5432/{DATABASE}"
# Long enough that a request only times out when something is broken, not merely slow.
REQUEST_TIMEOUT_SECONDS = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")


def machine_note(servers: str) -> str:
    return (
        f"This machine has {os.cpu_count()} CPU cores, shared by the load generator, {servers}:\n"
        "compare the shop with the floor measured in the same run; the absolute figures are not "
        "the shop's capacity."
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")


def fresh_database(database_url: str = DATABASE_URL) -> str:
    """Drop and recreate the database (`bench` unless named), migrate it with `shop db upgrade`
    and load the demo data."""
    url = make_url(database_url)
    if url.database is None:
        raise SystemExit(f"{database_url} names no database")
    host, port, user = url.host or HOST, str(url.port or 5432), url.username or "postgres"
    pg_args = ("-h", host, "-p", port, "-U", user)
    _run(["dropdb", *pg_args, "--if-exists", "--force", url.database])
    _run(["createdb", *pg_args, url.database])
    env = dict(os.environ, DATABASE_URL=database_url)
    _run([str(VENV_BIN / "shop"), "db", "upgrade"], env)
    _run([str(VENV_BIN / "shop"), "demo", "load"], env)
    return database_url


def shop_env(
    port: int, emulator_port: int | None = None, database_url: str = DATABASE_URL
) -> dict[str, str]:
    """The shop's environment: the bench database, and the emulator when there is one."""
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        SHOP_BASE_URL=f"http://{HOST}:{port}",
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
        LOGIN_RATE_LIMIT="100000 per minute",
    )
    env.pop("CELERY_BROKER_URL", None)
    env.pop("EMULATOR_WEBHOOK_URL", None)
    if emulator_port is not None:
        env["STRIPE_API_BASE"] = f"http://{HOST}:{emulator_port}"
    return env


@contextlib.contextmanager
def served(
    name: str, argv: Sequence[str], env: Mapping[str, str], port: int, ready_path: str, logs: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; its output goes to `logs/<name>.log`."""
    log_path = logs / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(name, process, port, ready_path, log_path)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class Gunicorn:
    """The one server setting both the shop and its floor are run with."""

    workers: int
    threads: int

    def _argv(self, app: str, port: int, *extra: str) -> list[str]:
        return [
            *(sys.executable, "-m", "gunicorn", "--bind", f"{HOST}:{port}"),
            *("--workers", str(self.workers), "--worker-class", "gthread"),
            *("--threads", str(self.threads), *extra, app),
        ]

    def shop(
        self,
        port: int,
        logs: Path,
        *,
        emulator_port: int | None = None,
        database_url: str = DATABASE_URL,
        env: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        """The shop on `port`; `env` adds to its environment, `extra` to gunicorn's options."""
        argv = self._argv("wsgi:app", port, *extra)
        environment = {**shop_env(port, emulator_port, database_url), **(env or {})}
        return served("shop", argv, environment, port, "/api/v1/health", logs)

    def floor(
        self, port: int, logs: Path
    ) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        argv = self._argv("floor_app:app", port, "--pythonpath", str(BENCH_DIR))
        env = dict(shop_env(port), FLOOR_POOL_SIZE=str(self.threads))
        return served("floor", argv, env, port, "/products", logs)

    def __str__(self) -> str:
        return f"gunicorn -w {self.workers} -k gthread --threads {self.threads}"


def stripe_emulator(
    port: int, logs: Path, webhook_url: str | None = None
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """The shop's Stripe emulator; it sends signed webhooks to `webhook_url` when given, else
    none (nothing pays the orders placed)."""
    env = dict(
        os.environ,
        STRIPE_SECRET_KEY=EMULATOR_SECRET_KEY,
        STRIPE_WEBHOOK_SECRET=EMULATOR_WEBHOOK_SECRET,
    )
    env.pop("EMULATOR_WEBHOOK_URL", None)
    if webhook_url is not None:
        env["EMULATOR_WEBHOOK_URL"] = webhook_url
    argv = [sys.executable, "-m", "shop.payments.emulator", "--port", str(port)]
    return served("emulator", argv, env, port, "/_emulator/health", logs)


def _wait_until_up(
    name: str, process: subprocess.Popen[bytes], port: int, path: str, log_path: Path
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        connection = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            connection.request("GET", path)
            if connection.getresponse().status < 500:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise SystemExit(f"{name} did not come up on port {port}; its output:\n{tail}")


def request_json(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        connection.request(method, path, body, dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass(frozen=True)
class Call:
    """The one request every client repeats."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    failures: Counter[str]
    cpu_seconds: dict[str, float]  # by process group, "load generator" among them
    machine_busy_seconds: float
    machine_seconds: float  # wall time × cores

    def rate(self, status: int) -> float:
        return self.statuses[status] / self.seconds

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000

    def errors(self, expected: int) -> int:
        return sum(self.statuses.values()) - self.statuses[expected] + sum(self.failures.values())

    def error_detail(self, expected: int) -> str:
        parts = [
            f"{status}×{n}" for status, n in sorted(self.statuses.items()) if status != expected
        ]
        parts += [f"{name}×{n}" for name, n in self.failures.most_common()]
        return f" ({', '.join(parts)})" if parts else ""

    def line(self, label: str, expected: int, unit: str) -> str:
        return (
            f"  {label:<6} {self.rate(expected):8.1f} {unit}   p50 {self.percentile_ms(50):6.1f} ms"
            f"   p99 {self.percentile_ms(99):6.1f} ms   errors {self.errors(expected)}"
            f"{self.error_detail(expected)}"
        )

    @property
    def others_share(self) -> float:
        """CPU share of everything else: processes not started here, reconnects, the kernel."""
        rest = self.machine_busy_seconds - sum(self.cpu_seconds.values())
        return max(0.0, rest) / (self.machine_seconds or 1.0)

    def cpu_line(self) -> str:
        """Where the machine's CPU went during the run, as shares of all its cores."""
        total = self.machine_seconds or 1.0
        shares = [f"{name} {seconds / total:.0%}" for name, seconds in self.cpu_seconds.items()]
        shares += [
            f"everything else {self.others_share:.0%}",
            f"idle {max(0.0, 1 - self.machine_busy_seconds / total):.0%}",
        ]
        per_request = self.cpu_seconds["load generator"] / max(1, len(self.latencies)) * 1e6
        return (
            f"         CPU: {', '.join(shares)}\n"
            f"         (the load generator spends {per_request:.0f} µs of CPU per request)"
        )


def disturbance_note(runs: Mapping[str, LoadResult], tolerated: float = 0.15) -> str | None:
    """A warning when other processes took a noticeable share of the CPU during some run."""
    busy = {label: run.others_share for label, run in runs.items() if run.others_share > tolerated}
    if not busy:
        return None
    shares = ", ".join(f"{share:.0%} during the {label} run" for label, share in busy.items())
    return (
        f"  note: everything else on this machine used {shares}; the comparison is skewed, "
        "rerun when the machine is quiet."
    )


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (gunicorn's master and workers, say)."""
    pids = [pid]
    index = 0
    while index < len(pids):
        try:
            with open(f"/proc/{pids[index]}/task/{pids[index]}/children") as children:
                pids += [int(child) for child in children.read().split()]
        except OSError:
            pass
        index += 1
    return pids


def _cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds used so far by each of these processes that still runs."""
    used = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
    return used


class _CpuMeter:
    """CPU time of a changing group of processes between two readings.

    A process that appears meanwhile counts in full; one that exits meanwhile is lost, which
    undercounts only short-lived ones (a reconnecting database client, say).
    """

    def __init__(self, processes: Callable[[], Sequence[int]]) -> None:
        self.processes = processes
        self.start = _cpu_seconds(processes())

    def seconds(self) -> float:
        now = _cpu_seconds(self.processes())
        return sum(used - self.start.get(pid, 0.0) for pid, used in now.items())


def _machine_seconds() -> tuple[float, float]:
    """CPU seconds spent busy and in total, summed over all cores, since boot."""
    with open("/proc/stat") as stat:
        fields = [int(n) for n in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / CLOCK_TICKS, sum(fields) / CLOCK_TICKS


class _KeepAlive:
    """One HTTP/1.1 keep-alive connection that sends prepared bytes and reads the answer.

    Leaner per request than http.client (no header objects), so the load generator costs little
    next to the servers it shares the machine with. Answers must carry Content-Length, as
    gunicorn's do.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    def open(self) -> socket.socket:
        self.sock = socket.create_connection((HOST, self.port), timeout=REQUEST_TIMEOUT_SECONDS)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(self, request: bytes) -> int:
        """Send one request and read its whole answer; returns the status code."""
        return self.exchange_body(request)[0]

    def exchange_body(self, request: bytes) -> tuple[int, bytes]:
        """Send one request and read its whole answer; returns the status code and body."""
        sock = self.sock or self.open()
        sock.sendall(request)
        data = self.buffer
        while (head_end := data.find(b"\r\n\r\n")) < 0:
            data += self._receive(sock)
        head = data[:head_end].lower()
        length = CONTENT_LENGTH.search(head)
        if length is None:
            raise http.client.HTTPException("answer without Content-Length")
        body_end = head_end + 4 + int(length[1])
        while len(data) < body_end:
            data += self._receive(sock)
        self.buffer = data[body_end:]
        if b"\r\nconnection: close" in head:
            self.close()
        return int(head[9:12]), data[head_end + 4 : body_end]

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        return chunk


def _prepared(call: Call, port: int) -> bytes:
    headers = {"Host": f"{HOST}:{port}", **call.headers}
    if call.body is not None:
        headers["Content-Length"] = str(len(call.body))
    head = f"{call.method} {call.path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + (call.body or b"")


def _client(
    port: int, call: Call, begin: threading.Barrier, stop: threading.Event, tally: _Tally
) -> None:
    connection = _KeepAlive(port)
    with contextlib.suppress(OSError):  # a failed connect is retried, and counted, below
        connection.open()
    request = _prepared(call, port)
    begin.wait()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            status = connection.exchange(request)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            tally.failures[type(exc).__name__] += 1
            connection.close()  # the next request opens a new connection
            time.sleep(0.01)
            continue
        tally.latencies.append(time.perf_counter() - started)
        tally.statuses[status] += 1
    connection.close()


def run_load(
    port: int,
    call: Call,
    *,
    clients: int,
    duration: float,
    watch: Mapping[str, Callable[[], Sequence[int]]] | None = None,
) -> LoadResult:
    """`clients` keep-alive connections repeat `call` back to back for `duration` seconds.

    No request is started after the time is up, but every started one is answered and counted,
    so the tally matches what the server did. `watch` names functions listing groups of
    processes whose CPU time is reported beside the load generator's own.
    """
    groups = {"load generator": lambda: [os.getpid()], **(watch or {})}
    begin = threading.Barrier(clients + 1)
    stop = threading.Event()
    tallies = [_Tally() for _ in range(clients)]
    threads = [
        threading.Thread(target=_client, args=(port, call, begin, stop, tally), daemon=True)
        for tally in tallies
    ]
    for thread in threads:
        thread.start()
    begin.wait()
    started = time.perf_counter()
    meters = {name: _CpuMeter(processes) for name, processes in groups.items()}
    busy_before, total_before = _machine_seconds()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu_seconds = {name: meter.seconds() for name, meter in meters.items()}
    busy_after, total_after = _machine_seconds()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures: Counter[str] = Counter()
    for tally in tallies:
        latencies += tally.latencies
        statuses += tally.statuses
        failures += tally.failures
    return LoadResult(
        seconds=seconds,
        latencies=latencies,
        statuses=statuses,
        failures=failures,
        cpu_seconds=cpu_seconds,
        machine_busy_seconds=busy_after - busy_before,
        machine_seconds=total_after - total_before,
    )


def postgres_processes(engine: Engine) -> list[int]:
    """The backends of this database and PostgreSQL's own background processes."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() OR datname IS NULL"
                )
            )
        )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"
