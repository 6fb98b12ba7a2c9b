"""``--workers N``: N predictor processes behind one port, their metrics aggregated, stopped together.

One Python process serves at most about one core (the event loop holds the GIL for parsing, validation and
answers), so a pod with more CPUs runs more processes. The supervisor (the process ``kfops serve --workers N`` or
``python -m kfops.serving --workers N`` starts as) loads no model and imports neither torch nor KServe:

- it binds and listens on ``host:port`` itself, once, and hands the listening socket to every worker (the way
  gunicorn and ``uvicorn --workers`` do): the port is held from the start to the end, and the kernel gives each
  new connection to whichever worker accepts it first;
- it makes a fresh ``PROMETHEUS_MULTIPROC_DIR`` (a new temporary folder per start, removed on exit) before any
  worker starts: every worker's counters and histograms go to files there (prometheus_client's multiprocess mode)
  and each worker's ``/metrics`` renders all of them, summed over the workers (``metrics.render_latest``);
- it starts the workers (``multiprocessing``'s spawn: fresh interpreters, no fork of a threaded process), each
  the same ``run_serve`` on the inherited socket with ``KFOPS_SERVING_WORKER`` = its index;
- on SIGTERM or SIGINT it passes SIGTERM to every worker and waits for them: each finishes the requests it has
  (uvicorn's graceful shutdown) and closes its payload logger, which writes every record queued, so every
  answered request is logged; a worker still running after ``STOP_SECONDS`` is killed. When a worker dies on its
  own (a model that fails to load, a crash) the supervisor stops the others and exits 1, for Kubernetes to
  restart the pod.

Payload logs: each worker has its own logger; file names carry the write time and a random suffix
(``records.record_file_name``), so workers never write the same file. Retention runs in worker 0 only.
gRPC (``--grpc-port``): every worker listens on the port with SO_REUSEPORT (gRPC's default on Linux).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

log = logging.getLogger(__name__)

WORKER_ENV = "KFOPS_SERVING_WORKER"  # the worker's index, set in each worker process
WORKERS_ENV = "KFOPS_SERVING_WORKERS"  # the default of --workers (a ServingRuntime or InferenceService env)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
STOP_SECONDS = 30.0  # how long workers may take to stop after SIGTERM before they are killed
_POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1


def worker_index() -> int | None:
    """This process's worker index under ``--workers``, None in a process of its own."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def default_workers() -> int:
    """``--workers``'s default: ``$KFOPS_SERVING_WORKERS``, else 1."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if not value:
        return 1
    try:
        return int(value)
    except ValueError:
        from kfops.components.contracts import KfopsError

        raise KfopsError(f"serve: ${WORKERS_ENV} must be a whole number of processes, got {value!r}") from None


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket the workers share (what uvicorn would bind: SO_REUSEADDR, IPv6 when the host is)."""
    from kfops.components.contracts import KfopsError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise KfopsError(f"serve: cannot listen on {host}:{port}: {err}") from err
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when the supervisor dies (even by SIGKILL), so no worker is orphaned."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took effect
        os._exit(1)


def _worker_main(args, sock: socket.socket, index: int, parent: int) -> None:
    """A worker process: the ordinary single-process server, on the supervisor's socket."""
    _die_with_parent(parent)
    os.environ[WORKER_ENV] = str(index)
    from kfops.components.contracts import KfopsError
    from kfops.serving.cli import run_serve

    args.workers = 1
    args.listen_socket = sock
    try:
        code = run_serve(args)
    except KfopsError as err:
        print(f"kfops serve (worker {index}): {err}", flush=True)
        code = 2
    sys.exit(code)


def run_workers(args, workers: int) -> int:
    """Serve with ``workers`` processes on ``args.host``:``args.port`` until SIGTERM/SIGINT; an exit code."""
    import multiprocessing

    if args.torch_threads is None:  # each worker's share of the CPUs, halved as for one process (batching.py)
        from kfops.components.resources import cpu_limit

        args.torch_threads = max(1, cpu_limit() // (2 * workers))
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    metrics_dir = tempfile.mkdtemp(prefix="kfops-serving-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the workers, set before they import prometheus_client
    stop_requested = False

    def request_stop(signum, frame) -> None:
        nonlocal stop_requested
        stop_requested = True

    handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    context = multiprocessing.get_context("spawn")
    processes = []
    exit_code = 0
    try:
        for index in range(workers):
            process = context.Process(
                target=_worker_main, args=(args, sock, index, os.getpid()), name=f"kfops-serving-worker-{index}"
            )
            process.start()
            processes.append(process)
        pids = ", ".join(str(p.pid) for p in processes)
        log.info("serving on http://%s:%d with %d worker processes (pids %s)", host, port, workers, pids)
        log.info("the workers' metrics are in %s", metrics_dir)
        while not stop_requested:
            failed = next((p for p in processes if p.exitcode is not None), None)
            if failed is not None:
                name, pid, code = failed.name, failed.pid, failed.exitcode
                log.error("worker %s (pid %d) exited with code %s: stopping the others", name, pid, code)
                exit_code = 1
                break
            time.sleep(_POLL_SECONDS)
    finally:
        sock.close()  # the workers hold their own copies; new connections wait in the backlog until they close
        _stop(processes)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if exit_code == 0:
        codes = [p.exitcode for p in processes]
        exit_code = 0 if all(code == 0 for code in codes) else 1
    log.info("all %d workers stopped", len(processes))
    return exit_code


def _stop(processes) -> None:
    """SIGTERM every worker still running, wait up to STOP_SECONDS for all, then SIGKILL what is left."""
    for process in processes:
        if process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.exitcode is None:
            log.error("worker %s (pid %d) did not stop in %.0f s: killed", process.name, process.pid, STOP_SECONDS)
            process.kill()
            process.join(5)
