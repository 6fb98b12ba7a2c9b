"""Task processes forked from a warm interpreter, for kfp.local runs on this machine.

kfp.local starts every task as a fresh Python process (``sh -ec ... python3 -m kfp.dsl.executor_main``). Starting
Python and kfp's executor is cheap (about 0.1 s with ``_KFP_RUNTIME=true``); what is not is each task importing the
same heavy libraries again: MLflow (~2 s) in six steps of the training pipeline, torch (~2-3 s) in two, Great
Expectations (~4 s), pandas in all nine. The server imports them once, in its own process, and forks one child per
task, the way Gunicorn's ``--preload`` or multiprocessing's forkserver do. Each task still runs in a process of its
own, with the task's environment, arguments, output and exit status, and kfp.local still orchestrates the run: only
the way the process is started changes. On a cluster every step is its own pod and none of this applies.

Protocol (a Unix socket in a private folder): the driver sends the task's command line and environment as one JSON
line, with its stdout/stderr pipe as an SCM_RIGHTS file descriptor; the server forks, the child runs
``kfp.dsl.executor_main`` as ``python -m`` would, and the server answers with the child's exit status (negative:
killed by that signal, as ``subprocess`` reports it). The driver may also ask for a function call (``call``: a
``module:function`` and JSON keyword arguments), which a forked child runs with the server's modules loaded and
answers in JSON: `kfops run`'s summary reads MLflow this way instead of importing it in the driver.

A task that comes before the modules it needs are loaded (``TRAINING_NEEDS``: the last preload each step of the
training pipeline imports) waits in the server until they are, instead of being forked at once to import them itself
while the server imports them too. Once pandas and pyarrow are loaded the server forks a light server (``light.sock``),
a copy that loads nothing more: the steps that need no more (version, split, preprocess) fork from it at once instead
of waiting for the server to finish the import in progress (torch's takes 2-8 s on 2 cores).

Safe forking: the server has no threads, forks only from its main loop between imports (never while an import holds
the import lock), and reaps children from a SIGCHLD handler. A command that is not kfp's lightweight-component
launcher, or a task whose environment differs from the server's in anything but the suite's own ``KFOPS_*``
variables (an import-time setting such as ``OMP_NUM_THREADS`` is already fixed in the server), runs as a fresh
process as before.
``KFOPS_TASK_SERVER=0`` turns the server off.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# What the training pipeline's steps import, in the order its steps first need them (measured with
# benchmarks/bench_local_run.py --imports): version-data pandas and pyarrow; validate MLflow, its SQLAlchemy stores
# (with alembic; the champion's suite is looked up in the registry) and Great Expectations; train torch, MLflow's
# package map and torch._dynamo (torch.optim wraps its step in it); evaluate matplotlib. What a later step needs
# loads while the earlier steps run.
TRAINING_PRELOAD = (
    "kfp.dsl.executor_main",
    "pandas",
    "pyarrow.parquet",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "great_expectations",
    "torch",
    # MLflow maps installed packages to modules (importlib.metadata over site-packages, ~1 s) once a process, when
    # train logs its model with pip requirements: done once here, every child has the map
    "mlflow.utils.requirements_utils:_init_modules_to_packages_map",
    "torch._dynamo",
    "torch.utils.tensorboard",
    "matplotlib",
)
# A first run in a new workspace (no MLflow store yet): validate looks up no champion and imports no MLflow
# (components/validate), so Great Expectations loads first and validate starts ~2-3 s sooner.
TRAINING_PRELOAD_NEW_STORE = (
    *TRAINING_PRELOAD[: TRAINING_PRELOAD.index("mlflow")],
    "great_expectations",
    *(name for name in TRAINING_PRELOAD[TRAINING_PRELOAD.index("mlflow") :] if name != "great_expectations"),
)
# The last of TRAINING_PRELOAD each step (or call) imports: a step that comes before it is loaded is forked once it
# is, rather than at once to import the same modules itself while the server imports them too, two processes on the
# same imports competing for 2 cores (validate used to pay Great Expectations' 5 s that way).
TRAINING_NEEDS = {
    "version_data": "pyarrow.parquet",
    "validate_data": "great_expectations",
    "split_data": "pyarrow.parquet",
    "preprocess": "pyarrow.parquet",
    "train": "torch.utils.tensorboard",
    "evaluate": "matplotlib",
    "gate": "mlflow.store.model_registry.sqlalchemy_store",
    "register": "mlflow.store.model_registry.sqlalchemy_store",
    "promote": "mlflow.store.model_registry.sqlalchemy_store",
    # `kfops run`'s calls (TaskServer.call): the default data, the summary
    "kfops.datagen:default_data_path": "pyarrow.parquet",
    "kfops.pipelines.run_summary:training_summary": "mlflow.store.model_registry.sqlalchemy_store",
}
# The preload after which the server forks a light server (TaskServer.start's ``light_after``).
TRAINING_LIGHT_AFTER = "pyarrow.parquet"
EXECUTOR_MODULE = "kfp.dsl.executor_main"
_MAX_MESSAGE = 1 << 24  # a task's executor input is JSON of a few kB; the component's source is embedded too
_STARTUP_TIMEOUT_S = 30.0
PRELOADED = "task server: preloaded every module"
_RESULT = "\x1ekfops-task-server-result "  # starts the line holding a call's JSON answer in the child's output


def enabled() -> bool:
    """Whether `kfops run` forks its tasks from a warm interpreter (``KFOPS_TASK_SERVER=0`` turns it off)."""
    return os.environ.get("KFOPS_TASK_SERVER", "1").strip().lower() not in ("0", "false", "no", "off")


def executor_arguments(full_command: Sequence[str]) -> tuple[str, list[str]] | None:
    """(component source, executor arguments) of kfp's lightweight-component command, or None for any other
    command (a container component, one that installs packages, a different launcher)."""
    if len(full_command) < 4 or list(full_command[:2]) != ["sh", "-ec"]:
        return None
    script = full_command[2]
    if EXECUTOR_MODULE not in script or '"$program_path/ephemeral_component.py"' not in script:
        return None
    if "pip install" in script or "pip" in script.split():
        return None
    return full_command[3], list(full_command[4:])


def task_environment(env_vars: dict[str, str] | None) -> dict[str, str]:
    """The environment kfp.local gives a task: this process's, with the task's own variables over it."""
    return {**os.environ, **(env_vars or {}), "_KFP_RUNTIME": "true"}


def forkable_environment(server_env: dict[str, str], task_env: dict[str, str]) -> bool:
    """A task may fork from a server started under ``server_env`` when its environment differs only in the suite's
    ``KFOPS_*`` variables (``KFOPS_IMAGE``), which are read while the task runs: anything else (``OMP_NUM_THREADS``,
    ``PYTHONPATH``, an MLflow setting) may have been read already, at import time, in the server."""
    differ = {name for name in server_env.keys() | task_env.keys() if server_env.get(name) != task_env.get(name)}
    return all(name.startswith("KFOPS_") for name in differ)


class TaskServer:
    """The driver's handle on a running server process (``start``), which it stops with ``stop``."""

    def __init__(
        self,
        process: subprocess.Popen,
        folder: Path,
        log_path: Path,
        environment: dict[str, str],
        needs: dict[str, str] | None = None,
        light: Sequence[str] = (),
    ):
        self.process = process
        self.needs = needs or {}
        self.light = set(light)  # what the light server has loaded: a task that needs no more goes to it
        self.environment = environment
        self.folder = folder
        self.socket_path = folder / "tasks.sock"
        self.light_socket_path = folder / "light.sock"
        self.log_path = log_path

    @classmethod
    def start(
        cls,
        preload: Sequence[str] = TRAINING_PRELOAD,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        needs: dict[str, str] | None = None,
        light_after: str | None = None,
    ) -> TaskServer:
        """Start the server; it imports ``preload`` in the background and answers tasks between imports. ``env``
        (default: this process's) is the environment the preloaded modules are imported under; ``log_path`` keeps
        the server's log (when each preload finished, each task forked; default: beside its socket, removed);
        ``needs`` maps a component function to the last preload it imports, which its task waits for (default
        ``TRAINING_NEEDS`` with the default preload, else none). Once ``light_after`` (one of ``preload``; default
        ``TRAINING_LIGHT_AFTER`` with the default preload) is loaded, the server forks a light server that loads
        nothing more: tasks that need no more than it has fork from it at once, never waiting for an import in
        progress in the server (torch's takes 2-8 s on 2 cores)."""
        training = tuple(preload) in (TRAINING_PRELOAD, TRAINING_PRELOAD_NEW_STORE)
        if needs is None:
            needs = TRAINING_NEEDS if training else {}
        if light_after is None and training:
            light_after = TRAINING_LIGHT_AFTER
        light = tuple(preload[: list(preload).index(light_after) + 1]) if light_after else ()
        folder = Path(tempfile.mkdtemp(prefix="kfops-tasks-"))  # 0700: only this user may connect
        log_path = log_path or folder / "server.log"
        # _KFP_RUNTIME as kfp's launcher sets it: kfp imports only what executors need
        environment = {**(os.environ if env is None else env), "_KFP_RUNTIME": "true"}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kfops.pipelines.task_server",
                    str(folder / "tasks.sock"),
                    f"--light-after={light_after or ''}",
                    *preload,
                ],
                stdin=subprocess.PIPE,  # its lifeline: the server exits when this process closes it or dies
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                close_fds=True,
            )
        return cls(process, folder, log_path, environment, needs, light)

    def alive(self) -> bool:
        return self.process.poll() is None

    def accepts(self, env_vars: dict[str, str] | None) -> bool:
        """Whether a task with these variables of its own may fork from this server (``forkable_environment``)."""
        return self.alive() and forkable_environment(self.environment, task_environment(env_vars))

    def _connect_light(self) -> socket.socket | None:
        """A connection to the light server, or None when it is not up (yet, or any more): the server serves all."""
        if not self.light_socket_path.exists():
            return None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(self.light_socket_path))
            return conn
        except OSError:
            conn.close()
            return None

    def _connect(self, path: Path) -> socket.socket:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(str(path))
                return conn
            except (FileNotFoundError, ConnectionRefusedError):
                conn.close()
                if not self.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the task server did not start; its log: {self.log_tail()}") from None
                time.sleep(0.02)

    def run(self, source: str, arguments: list[str], env_vars: dict[str, str] | None, on_line) -> int:
        """Run one task: ``on_line`` gets each line of its output as it comes; returns its exit status."""
        return self._forked({"source": source, "arguments": arguments}, task_environment(env_vars), on_line)

    def call(self, function: str, kwargs: dict):
        """``module:function(**kwargs)`` in a child forked from the server, with this process's environment and
        working directory; returns its result through JSON (a path, or another object JSON lacks, as its str). A call
        that raises raises RuntimeError with its output."""
        lines: list[str] = []
        code = self._forked({"call": function, "kwargs": kwargs}, dict(os.environ), lines.append)
        answers = [line[len(_RESULT) :] for line in lines if line.startswith(_RESULT)]
        if code != 0 or not answers:
            output = "".join(line for line in lines if not line.startswith(_RESULT)).strip()
            raise RuntimeError(f"{function} failed in the task server (exit status {code}): {output[-4000:]}")
        return json.loads(answers[-1])

    def _forked(self, request: dict, env: dict[str, str], on_line) -> int:
        after = self.needs.get(_function_name(request))
        if after:
            request = {**request, "after": after}
        # the light server, once it is up, for a task that needs no more than it has loaded (bound before it is
        # forked: its socket file is there only once it accepts)
        conn = self._connect_light() if after in self.light else None
        conn = conn or self._connect(self.socket_path)
        read_end, write_end = os.pipe()
        try:
            request = {**request, "env": env, "cwd": os.getcwd()}
            payload = json.dumps(request).encode() + b"\n"
            socket.send_fds(conn, [payload[:1]], [write_end])
            conn.sendall(payload[1:])
            os.close(write_end)
            write_end = -1
            with os.fdopen(read_end, "r", encoding="utf-8", errors="replace", newline=None) as output:
                read_end = -1
                for line in output:
                    on_line(line)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = conn.recv(64)
                if not chunk:
                    raise RuntimeError(f"the task server stopped while a task ran; its log: {self.log_tail()}")
                answer += chunk
            return int(answer)
        finally:
            conn.close()
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)

    def wait_until_preloaded(self, timeout_s: float = 60.0) -> None:
        """Block until the server has imported its whole preload list (tests use it to know what a task finds)."""
        deadline = time.monotonic() + timeout_s
        while PRELOADED not in self.log_path.read_text(errors="replace"):
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the task server did not finish its preloads; its log: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-lines:]).strip() or "(empty)"
        except OSError:
            return "(none)"

    def stop(self, timeout_s: float = 0.5) -> None:
        """Close the lifeline and wait for the server; kill it by its pid if it does not go (it holds nothing worth
        a wait: it may be in the middle of a preload import). Stopping twice is harmless."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


# ---- the server process --------------------------------------------------------------------------------------


def _run_task_in_child(request: dict, output_fd: int) -> None:
    """In the forked child: become the task's process, run kfp's executor (or the call asked for), and never
    return."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server reaps its children; a task waits for its own
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(devnull)
        os.close(output_fd)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        if "numpy" in sys.modules:  # a fresh process draws its own seed; the fork would share the server's
            sys.modules["numpy"].random.seed()
        code = _call_in_child(request) if "call" in request else _execute_task(request)
        import atexit

        atexit._run_exitfuncs()  # as at interpreter exit (MLflow flushes here); module teardown is skipped
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream: nothing left to lose
                stream.flush()
        os._exit(code)


def _execute_task(request: dict) -> int:
    """Run kfp's executor on the request's component source and arguments, as ``python -m`` would; the exit
    status."""
    folder = tempfile.mkdtemp()
    module_path = os.path.join(folder, "ephemeral_component.py")
    with open(module_path, "w", encoding="utf-8") as fh:
        fh.write(request["source"])
    sys.argv = [EXECUTOR_MODULE, "--component_module_path", module_path, *request["arguments"]]
    try:
        from kfp.dsl import executor_main

        executor_main.executor_main()
        return 0
    except SystemExit as stop:
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _call_in_child(request: dict) -> int:
    """Run the request's ``module:function`` and print its result as one marked JSON line; the exit status."""
    import importlib

    try:
        module_name, _, name = request["call"].partition(":")
        result = getattr(importlib.import_module(module_name), name)(**request.get("kwargs", {}))
        print(_RESULT + json.dumps(result, default=str), flush=True)  # a path answers as its str
        return 0
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1


def _fork_light_server(
    listener, socket_path: str, after: str, waiting: dict, held: list, pending: list, label: list
) -> socket.socket:
    """Fork the light server; returns the listener this process goes on with (the same in the server, the light
    one in the light server, which drops the server's connections and preloads and serves tasks only)."""
    light = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    light_path = os.path.join(os.path.dirname(socket_path), "light.sock")
    light.bind(light_path + ".new")
    light.listen(8)
    os.rename(light_path + ".new", light_path)  # the name appears once it accepts: the driver checks for it
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    pid = os.fork()
    if pid:
        light.close()
        print(f"{_clock()} task server: forked the light task server, pid {pid}, after {after}", flush=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        return listener
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
    listener.close()
    for conn in waiting.values():  # the server's tasks: the server answers for them
        conn.close()
    waiting.clear()
    for _request, fd, conn in held:
        os.close(fd)
        conn.close()
    held.clear()
    pending.clear()
    label[0] = "light task server"
    return light


def _reap_children(timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for this process's children to end."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.005)


def _clock() -> str:
    """The time of day as kfp.local's log writes it, so the two logs line up."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def _function_name(request: dict) -> str:
    if "call" in request:
        return str(request["call"])
    arguments = request.get("arguments", [])
    at = arguments.index("--function_to_execute") + 1 if "--function_to_execute" in arguments else -1
    return arguments[at] if 0 < at < len(arguments) else "?"


def _read_request(conn: socket.socket) -> tuple[dict, int]:
    first, fds, _flags, _addr = socket.recv_fds(conn, 1, 1)
    if len(fds) != 1 or not first:
        for fd in fds:
            os.close(fd)
        raise ValueError("a task request comes with exactly one output file descriptor")
    data = bytearray(first)
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk or len(data) > _MAX_MESSAGE:
            os.close(fds[0])
            raise ValueError("incomplete task request")
        data += chunk
    return json.loads(data), fds[0]


def serve(socket_path: str, preload: Sequence[str], light_after: str = "") -> None:
    """The server's main loop: import ``preload`` one module at a time (``module:function`` also calls a
    function of it that fills a per-process cache), answering tasks in between, then serve until the driver closes
    stdin. Once ``light_after`` is loaded, fork the light server: a copy that imports nothing more and answers on
    ``light.sock`` beside ``socket_path``."""
    import importlib
    import select
    import threading

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(8)
    waiting: dict[int, socket.socket] = {}  # child pid -> the driver's connection that waits for its status

    def reap(_signum=None, _frame=None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = waiting.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):  # the driver went away; nobody waits for this status
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()

    def fork(request: dict, output_fd: int, conn: socket.socket) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])  # record the pid before reaping it
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            listener.close()
            conn.close()
            for other in [*waiting.values(), *(c for _, fd, c in held)]:
                other.close()
            for _, fd, _ in held:
                os.close(fd)
            _run_task_in_child(request, output_fd)
        waiting[pid] = conn
        print(f"{_clock()} {label[0]}: forked pid {pid} for {_function_name(request)}", flush=True)
        os.close(output_fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])

    signal.signal(signal.SIGCHLD, reap)
    lifeline = sys.stdin.fileno()
    pending = list(preload)
    held: list[tuple[dict, int, socket.socket]] = []  # tasks waiting for a preload ("after"), in arrival order
    label = ["task server"]  # how the log names this process ("light task server" in the light one)

    while True:
        # No blocking while modules remain to import; then wait for tasks or the end of the lifeline.
        timeout = 0 if pending else None
        try:
            ready, _, _ = select.select([listener, lifeline], [], [], timeout)
        except InterruptedError:
            continue
        if lifeline in ready and not os.read(lifeline, 4096):
            listener.close()
            _reap_children(timeout_s=1.0)  # the light server ends on the same lifeline: no orphan, its CPU counted
            os._exit(0)  # nothing to flush; tearing down torch, MLflow and GX would only cost the driver's wait
        if listener in ready:
            conn, _ = listener.accept()
            try:
                request, output_fd = _read_request(conn)
            except (OSError, ValueError) as err:
                print(f"task server: bad request: {err}", file=sys.stderr, flush=True)
                conn.close()
                continue
            if request.get("after") in pending:
                print(f"{_clock()} task server: {_function_name(request)} waits for {request['after']}", flush=True)
                held.append((request, output_fd, conn))
            else:
                fork(request, output_fd, conn)
            continue
        if pending:
            name = pending.pop(0)
            started = time.perf_counter()
            try:
                module_name, _, function = name.partition(":")  # "module:function" also calls it, no arguments
                module = importlib.import_module(module_name)
                if function:
                    getattr(module, function)()
            except Exception as err:  # a missing optional library: the tasks that need it import it themselves
                print(f"task server: preloading {name} failed: {err!r}", file=sys.stderr, flush=True)
            print(f"{_clock()} task server: preloaded {name} in {time.perf_counter() - started:.2f} s", flush=True)
            if threading.active_count() > 1:  # forking copies no thread: whatever one holds stays held in a child
                print(f"task server: importing {name} started threads; forks may not be safe", flush=True)
            for task in [t for t in held if t[0]["after"] not in pending]:
                held.remove(task)
                fork(*task)
            if name == light_after:
                listener = _fork_light_server(listener, socket_path, name, waiting, held, pending, label)
                if label[0] != "task server":
                    continue  # the light server: no preloads of its own to finish
            if not pending:
                print(PRELOADED, flush=True)


if __name__ == "__main__":
    _light = sys.argv[2].removeprefix("--light-after=") if sys.argv[2:3] and sys.argv[2].startswith("--light") else ""
    serve(sys.argv[1], [name for name in sys.argv[2:] if not name.startswith("--light-after=")], _light)
