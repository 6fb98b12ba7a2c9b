"""One harness for every same-run comparison in this folder.

What a skeptic asks of a figure, done once here so that every script gets it the same way:

- **Load from two clients.** ``wrk`` (C, Debian's ``wrk``; POST bodies from a Lua script that rotates through a
  file of bodies) and our Python client (one asyncio process with aiohttp). Each runs pinned to its own CPUs with
  ``taskset``, apart from the targets, so the client's own cost does not decide the result.
- **The same pinning and threads for every target.** Each server is started under ``taskset -c SERVER_CPUS``
  with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` and ``KFOPS_BENCH_TORCH_THREADS`` set to
  the same count (``thread_env``); the scripts pass that count to every target's torch.
- **Interleaved rounds.** ``rounds(targets, n)`` gives A B C, B C A, C A B, ...: every target once per round,
  the order rotated, so a change in the machine's load hits all of them alike.
- **Machine load recorded.** ``MachineLoad.sample()`` before and after: the load averages and the share of CPU
  time busy over one second (from /proc/stat), beside every figure.
- **Ratios as the median of per-round ratios, with min-max** (``Spread``).
- **Provenance.** ``provenance()`` gives the exact command line, machine, date, Python, and the pinning.

The servers are stopped by their own process group id (each starts in a session of its own).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
WRK_INSTALL = "apt-get install -y --no-install-recommends wrk"
MIN_ROUNDS = 5

# wrk's Lua side: the bodies come from a file (one JSON body a line) and are sent in turn, each connection
# starting at its own offset; ``done`` prints one JSON line the harness reads (latencies in microseconds).
WRK_SCRIPT = r"""
local bodies = {}
local counter = 0
local path = os.getenv("KFOPS_WRK_BODIES")
for line in io.lines(path) do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, bodies[(counter % #bodies) + 1])
end

done = function(summary, latency, requests)
  io.write(string.format(
    'KFOPS_WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, '
    .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status,
    summary.errors.timeout))
end
"""


# ------------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Spread:
    """The median of per-round values, with their min and max."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("Spread.of: no values (did every round fail?)")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, digits: int = 2, suffix: str = "") -> str:
        return f"{self.median:,.{digits}f}{suffix} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


def per_round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Round by round, numerator / denominator (both measured in the same round)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"per_round_ratios: {len(numerator)} rounds against {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator, strict=True) if b]


def rounds(targets: Sequence[str], count: int) -> Iterator[tuple[int, list[str]]]:
    """(round number, targets in this round's order): every target once a round, the order rotated by one."""
    if count < 1:
        raise ValueError(f"rounds: count must be >= 1, got {count}")
    order = list(targets)
    for number in range(count):
        shift = number % len(order)
        yield number, order[shift:] + order[:shift]


# ------------------------------------------------------------------------------------------------ the machine
def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat's first line."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class MachineLoad:
    """The load averages (1, 5, 15 min) and the share of CPU time busy over ``window`` seconds, at one moment."""

    loadavg: tuple[float, float, float]
    busy_share: float
    window: float
    at: str

    @classmethod
    def sample(cls, window: float = 1.0) -> MachineLoad:
        busy0, total0 = _cpu_times()
        time.sleep(window)
        busy1, total1 = _cpu_times()
        share = (busy1 - busy0) / max(1, total1 - total0)
        return cls(os.getloadavg(), share, window, f"{datetime.now(UTC):%H:%M:%S} UTC")

    def text(self) -> str:
        one, five, fifteen = self.loadavg
        return (
            f"load average {one:.2f} / {five:.2f} / {fifteen:.2f}, CPUs {100 * self.busy_share:.0f}% busy over "
            f"{self.window:.0f} s ({self.at})"
        )


# ------------------------------------------------------------------------------------------------ pinning
@dataclass(frozen=True)
class Pinning:
    """Which CPUs the client and the targets run on, and the thread count every target gets."""

    client_cpus: str
    server_cpus: str
    threads: int = 1

    @classmethod
    def default(cls) -> Pinning:
        """The client on the last CPU, the targets on the others (one CPU each on a 2-CPU machine)."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("harness: at least 2 CPUs are needed to pin the client apart from the targets")
        return cls(str(cpus[-1]), ",".join(str(c) for c in cpus[:-1]))

    def server(self, command: list[str]) -> list[str]:
        return [_taskset(), "-c", self.server_cpus, *command]

    def client(self, command: list[str]) -> list[str]:
        return [_taskset(), "-c", self.client_cpus, *command]

    @classmethod
    def whole_machine(cls, count: int = 0) -> Pinning:
        """No client: every target gets this process's first ``count`` CPUs (0: all of them) and as many math
        threads. On a shared machine one thread each avoids OpenMP's spinning barriers, which slow a 2-thread fit
        many times over when other work holds the CPUs."""
        cpus = sorted(os.sched_getaffinity(0))
        if count < 0 or count > len(cpus):
            raise SystemExit(f"harness: --threads {count}: this process may use {len(cpus)} CPU(s) (0: all)")
        cpus = cpus[:count] if count else cpus
        return cls("", ",".join(str(c) for c in cpus), len(cpus))

    @classmethod
    def from_args(cls, client_cpus: str, server_cpus: str, threads: int) -> Pinning:
        """``--client-cpus``/``--server-cpus`` as given (empty: ``default()``'s), with ``threads`` per target."""
        default = cls.default()
        client, server = client_cpus or default.client_cpus, server_cpus or default.server_cpus
        if set(client.split(",")) & set(server.split(",")):
            raise SystemExit(f"harness: client CPUs {client} overlap the targets' {server}: pin them apart")
        return cls(client, server, threads)

    def text(self) -> str:
        return (
            f"client on CPU {self.client_cpus}, every target on CPU {self.server_cpus} (`taskset`), "
            f"{self.threads} torch/OpenMP thread(s) in every target"
        )


def _taskset() -> str:
    path = shutil.which("taskset")
    if path is None:
        raise SystemExit("harness: taskset is missing (Debian: apt-get install -y util-linux)")
    return path


def thread_env(threads: int) -> dict[str, str]:
    """The environment that gives a target ``threads`` math threads, whatever library it scores with."""
    count = str(threads)
    return {
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
        "OPENBLAS_NUM_THREADS": count,
        "KFOPS_BENCH_TORCH_THREADS": count,
    }


def pin_in_process(pinning: Pinning) -> None:
    """For targets measured inside this process (functions, not servers): pin the process (and what it starts) to
    the targets' CPUs and give every math library, loaded or not, the same thread count."""
    os.sched_setaffinity(0, {int(cpu) for cpu in pinning.server_cpus.split(",")})
    os.environ.update(thread_env(pinning.threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a GPU machine's own environment may lack it: pools not loaded yet read the variables
        pass
    else:
        threadpool_limits(limits=pinning.threads)  # OpenMP/BLAS pools already loaded (numpy, scikit-learn)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(pinning.threads)


def bench_torch_threads() -> int:
    """In a benchmark's own server: the thread count the harness chose (sets torch's, returns it)."""
    import torch

    threads = int(os.environ.get("KFOPS_BENCH_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    return threads


# ------------------------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A target's process: started pinned with the harness's thread settings, stopped by its own pid."""

    name: str
    command: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen | None = None

    def start(self, pinning: Pinning) -> Server:
        handle = self.log.open("w")
        env = {**os.environ, **thread_env(pinning.threads), **self.env}
        self.process = subprocess.Popen(
            pinning.server(self.command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        handle.close()  # the child holds its own copy
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def wait_ready(self, url: str, timeout: float = 180.0) -> None:
        """Poll ``url`` until it answers 200; a server that exits first fails with its log's tail."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name}: {url} was not ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


# ------------------------------------------------------------------------------------------------ clients
@dataclass(frozen=True)
class Measurement:
    """One load against one target in one round."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(f"wrk is not installed: {WRK_INSTALL} (the harness drives load with it)")
    return path


class BodyFile:
    """Request bodies, one a line, in a file both clients read."""

    def __init__(self, bodies: Sequence[bytes], folder: Path) -> None:
        if not bodies:
            raise ValueError("BodyFile: no request bodies")
        if any(b"\n" in body for body in bodies):
            raise ValueError("BodyFile: a body holds a newline (one body a line)")
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(suffix=".jsonl", dir=folder)
        with os.fdopen(handle, "wb") as fh:
            fh.write(b"\n".join(bodies) + b"\n")
        self.path = Path(name)
        self.count = len(bodies)


def wrk_load(url: str, bodies: BodyFile, connections: int, seconds: float, pinning: Pinning) -> Measurement:
    """``wrk`` with one thread and ``connections`` connections for ``seconds``, pinned to the client's CPUs."""
    wrk = require_wrk()
    script = bodies.path.with_suffix(".lua")
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    command += ["-s", str(script), url]
    done = subprocess.run(
        pinning.client(command),
        capture_output=True,
        text=True,
        env={**os.environ, "KFOPS_WRK_BODIES": str(bodies.path)},
        timeout=seconds + 60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("KFOPS_WRK ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk against {url} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    summary = json.loads(lines[-1].removeprefix("KFOPS_WRK "))
    errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Measurement(
        summary["requests"], summary["duration_us"] / 1e6, summary["p50_us"] / 1e3, summary["p99_us"] / 1e3, errors
    )


def python_load(url: str, bodies: BodyFile, clients: int, seconds: float, pinning: Pinning) -> Measurement:
    """Our aiohttp client (``post_loop``) in a process of its own, pinned to the client's CPUs."""
    command = [sys.executable, __file__, "client", url, str(bodies.path), str(clients), str(seconds)]
    done = subprocess.run(pinning.client(command), capture_output=True, text=True, timeout=seconds + 120, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("KFOPS_CLIENT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"python client against {url} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return Measurement(**json.loads(lines[-1].removeprefix("KFOPS_CLIENT ")))


CLIENTS = {"wrk": wrk_load, "python": python_load}


async def post_loop(url: str, payloads: list[bytes], clients: int, seconds: float) -> tuple[list[float], int, float]:
    """``clients`` concurrent loops, each POSTing the next body as soon as the last answer came: the latencies
    (s), the non-200 count, and the seconds it ran. aiohttp rather than httpx: on 2 shared CPUs httpx's own
    overhead, not the server, capped the rate."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < stop:
                body = payloads[i % len(payloads)]
                i += clients
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _client_main(url: str, bodies_path: str, clients: str, seconds: str) -> None:
    payloads = Path(bodies_path).read_bytes().splitlines()
    asyncio.run(post_loop(url, payloads, int(clients), min(1.0, float(seconds))))  # connections opened, warm
    latencies, errors, elapsed = asyncio.run(post_loop(url, payloads, int(clients), float(seconds)))
    result = {
        "requests": len(latencies),
        "seconds": elapsed,
        "p50_ms": 1000 * quantile(latencies, 0.5) if latencies else 0.0,
        "p99_ms": 1000 * quantile(latencies, 0.99) if latencies else 0.0,
        "errors": errors,
    }
    print("KFOPS_CLIENT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ reporting
def command_line() -> str:
    """The command that produced a figure, as typed from the repository's root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        script_text = str(script)
    return shlex.join(["python", script_text, *sys.argv[1:]])


def provenance(pinning: Pinning | None, before: MachineLoad, after: MachineLoad, extra: str = "") -> str:
    """One paragraph: command, machine, date, Python, pinning, and the machine's load before and after."""
    cpus = os.cpu_count()
    text = (
        f"`{command_line()}` · {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.machine()} with {cpus} CPUs, "
        f"{_memory_gib():.0f} GiB, Python {platform.python_version()}, shared with other work. "
    )
    if pinning is not None:
        text += pinning.text() + ". "
    text += f"Machine before: {before.text()}; after: {after.text()}."
    return text + (" " + extra if extra else "")


def _memory_gib() -> float:
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def append_results(text: str, path: Path | str = RESULTS) -> None:
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(text if text.startswith("\n") else "\n" + text)


def add_record_arguments(parser, in_process_threads: bool = True) -> None:
    """The options every ``measure_and_record`` script shares: ``--rounds``, ``--no-write``, ``--results`` and, for
    scripts whose targets run in this process, ``--threads`` (``Pinning.whole_machine``'s count)."""
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS)
    if in_process_threads:
        parser.add_argument(
            "--threads",
            type=int,
            default=0,
            help="CPUs, and torch/OpenMP threads, for every target (0: all of this process's)",
        )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--results", default=str(RESULTS), help="Markdown file the section is appended to")


def measure_and_record(name: str, args, pinning: Pinning, run, report) -> str:
    """``run(args, scratch, pinning)`` in a scratch folder, then ``report(results, args, pinning, load before,
    load after)``: printed, and appended to RESULTS.md (or ``args.results`` where the script has that option) unless
    ``args.no_write``. The tail every comparison shares."""
    before = MachineLoad.sample()
    with tempfile.TemporaryDirectory(prefix=f"kfops-bench-{name}-") as tmp:
        results = run(args, Path(tmp), pinning)
    text = report(results, args, pinning, before, MachineLoad.sample())
    print(text)
    if not args.no_write:
        append_results(text, getattr(args, "results", None) or RESULTS)
    return text


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "client":
    _client_main(*sys.argv[2:])
