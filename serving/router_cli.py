"""The router's command lines. Only argparse at import time: the router (aiohttp, uvicorn) loads when one runs.

- ``kfops serve --model A --challenger B --mode shadow|ab|canary [--split P] [--entity-key FIELD]``: on this
  machine, starts the two predictors as child ``python -m kfops.serving`` processes on free 127.0.0.1 ports
  (each in its own process: no shared GIL, a crash of one is seen), waits until both are ready, then serves the
  router on ``--host``:``--port``; stops the children by pid when it exits, and exits 1 if one of them dies.
- ``kfops route --stable URL --challenger URL --mode ...`` (also ``python -m kfops.serving route ...``, what
  the serving image runs in a router InferenceService): only the router, in front of two predictors that run
  elsewhere (two predictor InferenceServices).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time

MODES = ("ab", "shadow", "canary")  # kfops.serving.router.MODES, without importing it
START_TIMEOUT_SECONDS = 300.0

STOP_TIMEOUT_SECONDS = 15.0


def _add_routing_options(group, *, mode_required: bool) -> None:
    group.add_argument(
        "--mode",
        choices=MODES,
        required=mode_required,
        help="ab: sticky split by entity; shadow: stable answers, the challenger gets a copy off the response "
        "path; canary: a random share to the challenger, falling back to stable when it fails",
    )
    group.add_argument(
        "--split",
        type=float,
        help="the challenger's percent, 0..100: of entities (ab, default 50), of requests (canary, default 10), "
        "of requests mirrored (shadow, default 100)",
    )
    group.add_argument(
        "--entity-key",
        default="",
        help="the row field (V1) or input (V2) holding the entity id that ab mode hashes; rows without it use "
        "the x-entity-id header. Removed from rows before they reach a predictor (in every mode)",
    )
    group.add_argument(
        "--forward-entity-key",
        action="store_true",
        help="keep the entity field in the rows sent to the predictors (when the model takes it as a feature)",
    )
    group.add_argument(
        "--challenger-timeout-ms",
        type=float,
        default=5000,
        help="a challenger call slower than this falls back to stable (ab, canary) or counts as failed (shadow)",
    )
    group.add_argument("--upstream-timeout-s", type=float, default=30, help="how long a stable call may take")
    group.add_argument(
        "--shadow-max-in-flight",
        type=int,
        default=64,
        help="shadow calls in flight at most; beyond it copies wait in the queue, or are shed (counted)",
    )
    group.add_argument(
        "--shadow-max-callers",
        type=int,
        default=1,
        help="a shadow copy is sent only while the router's recent concurrency (other callers in flight when a "
        "request arrives, averaged over about 16 requests) is below this (default 1: a caller at a time; in a "
        "cluster, where the challenger has CPUs of its own, raise it to about the router's usual concurrency to "
        "mirror more under load)",
    )
    group.add_argument(
        "--shadow-max-queued",
        type=int,
        default=64,
        help="shadow copies that may wait for the router to have room; past it they are shed (counted)",
    )
    group.add_argument(
        "--shadow-max-delay-ms",
        type=float,
        default=1000,
        help="a queued shadow copy not sent within this is shed (counted)",
    )
    group.add_argument("--shadow-log", help="folder or s3:// prefix for shadow comparison records (per row)")
    group.add_argument("--shadow-log-format", choices=["jsonl", "parquet"], default="jsonl")


def add_challenger_arguments(parser: argparse.ArgumentParser) -> None:
    """``kfops serve``'s router options (used only with --challenger)."""
    group = parser.add_argument_group("shadow / A/B / canary router (with --challenger)")
    group.add_argument(
        "--challenger",
        help="a second model (same forms as --model): serve both behind a router on --host/--port",
    )
    _add_routing_options(group, mode_required=False)


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stable", required=True, help="base URL of the stable predictor, e.g. http://fraud-v3")
    parser.add_argument("--challenger", required=True, help="base URL of the challenger predictor")
    parser.add_argument("--name", default="model", help="the model name callers use: /v1/models/NAME:predict")
    parser.add_argument("--stable-model", help="the name the stable predictor serves under (default: --name)")
    parser.add_argument("--challenger-model", help="the name the challenger serves under (default: --name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-body-mb", type=float, default=64, help="largest request body accepted (a 400 past it)")
    parser.add_argument("--log-level", default="INFO", help="Python log level of the router")
    parser.add_argument(
        "--http-server",
        choices=("own", "uvicorn"),
        default="own",
        help="the router's own HTTP/1.1 server, or uvicorn (benchmarks/RESULTS.md compares them)",
    )
    parser.add_argument(
        "--http-client",
        choices=("own", "aiohttp"),
        default="own",
        help="the router's own keep-alive client to the predictors, or aiohttp's",
    )
    _add_routing_options(parser, mode_required=True)


def add_route_command(sub) -> None:
    """The ``kfops route`` sub-command."""
    route = sub.add_parser(
        "route",
        help="run the shadow / A/B / canary router in front of two predictor URLs",
        description="Serve KServe's V1/V2 REST endpoints and route each request to a stable or a challenger "
        "predictor: sticky A/B by entity id, shadow (challenger off the response path) or canary with fallback.",
    )
    add_route_arguments(route)
    route.set_defaults(func=run_route)


def build_route_parser() -> argparse.ArgumentParser:
    """``python -m kfops.serving route ...``."""
    parser = argparse.ArgumentParser(prog="python -m kfops.serving route", description=add_route_command.__doc__)
    add_route_arguments(parser)
    return parser


def route_main(argv: list[str] | None = None) -> int:
    from kfops.components.contracts import KfopsError

    args = build_route_parser().parse_args(argv)
    try:
        return run_route(args)
    except KfopsError as err:
        print(f"kfops route: {err}", file=sys.stderr, flush=True)
        return 2


# ------------------------------------------------------------------------------------------------ shared
def _setup_logging(level_name: str, command: str) -> None:
    from kfops.components.contracts import KfopsError

    level = getattr(logging, str(level_name).upper(), None)
    if not isinstance(level, int):
        raise KfopsError(f"{command}: unknown --log-level {level_name!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)


def router_config(args, stable_url: str, challenger_url: str, name: str):
    """A RouterConfig from the parsed flags (raises KfopsError naming a bad one)."""
    from kfops.components.contracts import KfopsError
    from kfops.serving.router_types import RouterConfig

    if args.max_body_mb <= 0:
        raise KfopsError(f"router: --max-body-mb must be positive, got {args.max_body_mb}")
    for flag, value in (
        ("--challenger-timeout-ms", args.challenger_timeout_ms),
        ("--upstream-timeout-s", args.upstream_timeout_s),
    ):
        if not value > 0:
            raise KfopsError(f"router: {flag} must be positive, got {value}")
    return RouterConfig(
        stable_url=stable_url,
        challenger_url=challenger_url,
        mode=args.mode,
        split=args.split,
        model_name=name,
        stable_model=getattr(args, "stable_model", None) or "",
        challenger_model=getattr(args, "challenger_model", None) or "",
        entity_key=args.entity_key or "",
        # With online features the predictors need the entity id the router would otherwise strip.
        forward_entity_key=args.forward_entity_key or bool(getattr(args, "feature_repo", None)),
        timeout_s=args.upstream_timeout_s,
        challenger_timeout_s=args.challenger_timeout_ms / 1000,
        shadow_max_in_flight=args.shadow_max_in_flight,
        shadow_max_callers=args.shadow_max_callers,
        shadow_max_queued=args.shadow_max_queued,
        shadow_max_delay_s=args.shadow_max_delay_ms / 1000,
        shadow_log=args.shadow_log or "",
        shadow_log_format=args.shadow_log_format,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
    )


def _check_port(port: int) -> None:
    from kfops.components.contracts import KfopsError

    if not 0 <= port <= 65535:
        raise KfopsError(f"router: --port must be between 0 and 65535, got {port}")


# ------------------------------------------------------------------------------------------------ kfops route
def run_route(args) -> int:
    _setup_logging(args.log_level, "route")
    _check_port(args.port)
    config = router_config(args, args.stable, args.challenger, args.name)
    from kfops.serving.router import Router, serve_router

    logging.getLogger(__name__).info(
        "routing '%s' (%s, split %g) to stable %s and challenger %s on http://%s:%d",
        config.model_name,
        config.mode,
        config.split,
        config.stable_url,
        config.challenger_url,
        args.host,
        args.port,
    )
    return serve_router(Router(config, client=args.http_client), args.host, args.port, server=args.http_server)


# ------------------------------------------------------------------------------------------------ kfops serve
def uses_router(args) -> bool:
    """Whether ``kfops serve`` was asked for the router; router flags without --challenger are an error."""
    from kfops.components.contracts import KfopsError

    if getattr(args, "challenger", None):
        if not args.mode:
            raise KfopsError("serve: --challenger needs --mode ab, shadow or canary")
        return True
    router_flags = {"--mode": args.mode, "--split": args.split, "--entity-key": args.entity_key}
    router_flags["--shadow-log"] = args.shadow_log
    given = [flag for flag, value in router_flags.items() if value is not None and value != ""]
    if given:
        raise KfopsError(f"serve: {', '.join(given)} only apply with --challenger MODEL")
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_command(args, model: str, name: str, port: int, variant: str, tracking_uri: str) -> list[str]:
    command = [sys.executable, "-m", "kfops.serving", "--model", model, "--name", name]
    command += ["--host", "127.0.0.1", "--port", str(port), "--variant", variant]
    command += ["--max-batch-rows", str(args.max_batch_rows), "--max-wait-ms", str(args.max_wait_ms)]
    command += ["--max-request-rows", str(args.max_request_rows), "--max-body-mb", str(args.max_body_mb)]
    command += ["--log-level", str(args.log_level)]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    if args.torch_threads is not None:
        command += ["--torch-threads", str(args.torch_threads)]
    if args.payload_log:  # one sink: each record's `variant` says which predictor wrote it
        command += ["--payload-log", args.payload_log, "--payload-log-format", args.payload_log_format]
        from kfops.serving.payload_policy import policy_argv

        command += policy_argv(args)  # the same privacy controls (the salt variable is inherited)
    if args.allow_extra_fields:
        command += ["--allow-extra-fields"]
    from kfops.serving.feature_lookup import feature_argv

    command += feature_argv(args)  # both predictors fetch online features by the same entity key
    return command


def lower_priority(pid: int) -> str:
    """Let process ``pid`` run only on CPU time nobody else wants: Linux's SCHED_IDLE policy (threads it starts
    later inherit it), else the lowest nice level. In shadow mode the challenger's work is for comparison
    only: on one machine, the caller's path (router, stable) must not wait for it. Returns what was done."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, pid, 19)
            return "nice 19"
        except (AttributeError, OSError) as err:
            return f"normal priority ({err})"


def _ready(url: str) -> bool:
    from kfops.components import http

    try:
        return http.get(url, timeout=1).status == 200
    except http.HTTPError:  # not up yet, or not ready (503)
        return False


def _dead(children: dict) -> str | None:
    for variant, (proc, model) in children.items():
        code = proc.poll()
        if code is not None:
            return f"the {variant} predictor ({model}, pid {proc.pid}) exited with code {code}"
    return None


def _stop(children: dict) -> None:
    """SIGTERM each child by its pid, then SIGKILL whichever has not exited in time."""
    for proc, _ in children.values():
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for proc, _ in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


class _Stopped(Exception):
    """SIGTERM/SIGINT while the predictors start."""


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signal.Signals(signum).name)


def run_local_router(args) -> int:
    """``kfops serve --challenger``: two child predictors on 127.0.0.1 and the router in this process."""
    from kfops.components.contracts import KfopsError
    from kfops.serving.cli import _served_name, _tracking_uri

    if args.grpc_port is not None:
        raise KfopsError("serve: --grpc-port cannot be combined with --challenger: the router serves REST only")
    _check_port(args.port)
    name = _served_name(args)
    # Validate every flag before any child starts; the upstream URLs are only known once their ports are picked.
    unstarted = "http://127.0.0.1:1"
    config = router_config(args, unstarted, unstarted, name)
    tracking_uri = _tracking_uri(args)
    log = logging.getLogger(__name__)
    children: dict[str, tuple[subprocess.Popen, str]] = {}
    ports = {"stable": _free_port(), "challenger": _free_port()}
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            for variant, model in (("stable", args.model), ("challenger", args.challenger)):
                command = _child_command(args, model, name, ports[variant], variant, tracking_uri)
                children[variant] = (subprocess.Popen(command), model)
                if variant == "challenger" and args.mode == "shadow":
                    how = lower_priority(children[variant][0].pid)
                    log.info("shadow challenger runs at %s: it gets only CPU time the caller's path leaves", how)
                pid = children[variant][0].pid
                log.info("%s predictor %s: pid %d on http://127.0.0.1:%d", variant, model, pid, ports[variant])
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            waiting = set(children)
            while waiting:
                if message := _dead(children):
                    log.error("%s before it was ready", message)
                    return 1
                if time.monotonic() > deadline:
                    log.error("predictors %s not ready after %.0f s", sorted(waiting), START_TIMEOUT_SECONDS)
                    return 1
                waiting = {v for v in waiting if not _ready(f"http://127.0.0.1:{ports[v]}/v2/models/{name}/ready")}
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        import dataclasses

        from kfops.serving.router import Router, serve_router

        config = dataclasses.replace(
            config,
            stable_url=f"http://127.0.0.1:{ports['stable']}",
            challenger_url=f"http://127.0.0.1:{ports['challenger']}",
        )
        log.info("routing '%s' (%s, split %g) on http://%s:%d", name, config.mode, config.split, args.host, args.port)
        return serve_router(Router(config), args.host, args.port, watch=lambda: _dead(children))
    except _Stopped as stopped:
        log.info("%s while the predictors started: stopping them", stopped)
        return 0
    finally:
        _stop(children)
