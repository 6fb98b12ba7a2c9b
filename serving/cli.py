"""``kfops serve`` and ``python -m kfops.serving``: serve one registered model (or model folder) over KServe's
V1 and V2 REST protocols. Only argparse at import time: KServe, MLflow and torch load when the command runs."""

from __future__ import annotations

import argparse
import logging
import os

DEFAULT_NAME = "model"


def add_serve_arguments(parser: argparse.ArgumentParser, *, workspace: bool = True) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="NAME@ALIAS (e.g. fraud-detector@champion), NAME/VERSION, models:/..., or a local MLflow model "
        "folder such as /mnt/models",
    )
    parser.add_argument(
        "--name",
        help="the name the model is served under, in /v1/models/NAME and /v2/models/NAME "
        "(default: the registered name, else 'model')",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, help="also serve the V2 gRPC protocol on this port (same host)")
    parser.add_argument("--max-body-mb", type=float, default=64, help="largest request body accepted (a 400 past it)")
    parser.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)")
    if workspace:
        parser.add_argument(
            "--workspace", help="local workspace whose MLflow store to use when no tracking URI is set (./.kfops)"
        )
    parser.add_argument(
        "--workers",
        type=int,
        help="predictor processes behind the one port, metrics summed over them on /metrics (default: "
        "$KFOPS_SERVING_WORKERS, else 1); each process uses about one CPU, so up to the pod's CPU limit",
    )
    parser.add_argument("--max-batch-rows", type=int, default=256, help="rows merged into one model call")
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long an idle model waits to fill a batch (0: never)"
    )
    parser.add_argument(
        "--max-request-rows", type=int, default=10_000, help="rows one request may carry (more is a 400)"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="threads torch may use for a batch (default: half the container's CPU limit, at least 1)",
    )
    parser.add_argument("--payload-log", help="folder or s3:// prefix to log requests and predictions to (JSONL)")
    parser.add_argument("--payload-log-format", choices=["jsonl", "parquet"], default="jsonl")
    from kfops.serving.payload_policy import add_policy_arguments

    add_policy_arguments(parser)  # retention, dropped and hashed fields: the payload log's privacy controls
    parser.add_argument(
        "--allow-extra-fields",
        action="store_true",
        help="ignore request fields the model's training data never had, instead of answering 400 naming them",
    )
    parser.add_argument("--log-level", default="INFO", help="Python log level of the server")
    parser.add_argument(
        "--variant", default="default", help="the variant name written in payload-log records (stable, challenger)"
    )
    from kfops.serving.router_cli import add_challenger_arguments

    add_challenger_arguments(parser)
    from kfops.serving.feature_lookup import add_feature_arguments

    add_feature_arguments(parser, entity_key=False)  # --entity-key comes with the router's options


def _served_name(args) -> str:
    if args.name:
        return args.name
    ref = args.model.strip()
    if not ref.startswith("models:/") and (
        ref.startswith(("/", ".", "~", "file:")) or os.path.isdir(os.path.expanduser(ref))
    ):
        return DEFAULT_NAME  # a model folder: no registered name to borrow
    return ref.removeprefix("models:/").partition("@")[0].partition("/")[0] or DEFAULT_NAME


def _tracking_uri(args) -> str:
    uri = getattr(args, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    if hasattr(args, "workspace"):  # kfops serve: the local workspace's store
        from kfops.components.workspace import workspace

        return workspace(args.workspace).tracking_uri()
    return ""


def make_payload_logger(sink: str, model_name: str, fmt: str = "jsonl", **options):
    """A PayloadLogger for ``sink`` whose drops count in model_payload_log_dropped_total (``options``: max_queue,
    batch_rows, flush_seconds, fields, retention)."""
    from kfops.components.contracts import KfopsError
    from kfops.serving import metrics

    try:
        from kfops.serving.payload_log import PayloadLogger
    except ImportError as err:  # the payload logger is a separate module; serving works without it
        raise KfopsError(f"--payload-log needs kfops.serving.payload_log, which cannot be imported: {err}") from err
    return PayloadLogger(
        sink,
        model_name,
        fmt=fmt,
        on_drop=lambda n: metrics.count_payload_drop(model_name, n),
        **options,
    )


def run_serve(args) -> int:
    from kfops.components.contracts import KfopsError

    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise KfopsError(f"serve: unknown --log-level {args.log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    import warnings

    # KServe answers with FastAPI's ORJSONResponse, which newer FastAPI releases flag as deprecated.
    warnings.filterwarnings("ignore", message=".*ORJSONResponse.*")
    for number, flag in ((args.max_batch_rows, "--max-batch-rows"), (args.max_request_rows, "--max-request-rows")):
        if number < 1:
            raise KfopsError(f"serve: {flag} must be >= 1, got {number}")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise KfopsError(f"serve: --torch-threads must be >= 1, got {args.torch_threads}")
    if args.max_body_mb <= 0:
        raise KfopsError(f"serve: --max-body-mb must be positive, got {args.max_body_mb}")
    if args.max_wait_ms < 0:
        raise KfopsError(f"serve: --max-wait-ms must be >= 0, got {args.max_wait_ms}")
    for flag, number in (("--port", args.port), ("--grpc-port", args.grpc_port)):
        if number is not None and not 0 <= number <= 65535:
            raise KfopsError(f"serve: {flag} must be between 0 and 65535, got {number}")

    from kfops.serving.router_cli import run_local_router, uses_router
    from kfops.serving.workers import default_workers, run_workers, worker_index

    workers = args.workers if getattr(args, "workers", None) is not None else default_workers()
    if workers < 1:
        raise KfopsError(f"serve: --workers must be >= 1, got {workers}")
    if uses_router(args):  # --challenger: two child predictors behind the router
        if workers > 1:
            raise KfopsError("serve: --workers runs one model's predictor in several processes; not with --challenger")
        return run_local_router(args)
    if workers > 1:  # this process supervises; the workers load the model
        return run_workers(args, workers)

    from kfops.serving.app import serve
    from kfops.serving.feature_lookup import feature_lookup_from_args
    from kfops.serving.payload_policy import policy_from_args
    from kfops.serving.predictor import TabularPredictor

    name = _served_name(args)
    fields, retention = policy_from_args(args)
    if (fields or retention) and not args.payload_log:
        raise KfopsError("serve: the --payload-log-* privacy flags need --payload-log")
    if worker_index() not in (None, 0):
        retention = None  # one worker deletes old payload logs; N doing it at once would race over the same files
    payload_logger = (
        make_payload_logger(
            args.payload_log,
            name,
            args.payload_log_format,
            fields=fields,
            retention=retention,
            flush_seconds=args.payload_log_flush_seconds,
        )
        if args.payload_log
        else None
    )
    predictor = TabularPredictor(
        name,
        args.model,
        _tracking_uri(args),
        max_batch_rows=args.max_batch_rows,
        max_wait_ms=args.max_wait_ms,
        max_request_rows=args.max_request_rows,
        payload_logger=payload_logger,
        torch_threads=args.torch_threads,
        variant=args.variant,
        feature_lookup=feature_lookup_from_args(args),  # --feature-repo: online features by entity id
        allow_extra_fields=args.allow_extra_fields,
    )
    logging.getLogger(__name__).info("serving %s as '%s' on http://%s:%d", args.model, name, args.host, args.port)
    return serve(
        predictor,
        args.host,
        args.port,
        grpc_port=args.grpc_port,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        outcomes_sink=args.payload_log or "",  # POST /v1/outcomes writes beside the payload log
        sock=getattr(args, "listen_socket", None),  # a worker's: the supervisor's listening socket
    )


def add_serve_command(sub) -> None:
    """The ``kfops serve`` sub-command (called from kfops.cli.build_parser)."""
    serve_cmd = sub.add_parser(
        "serve",
        help="serve a registered model over KServe's V1/V2 REST protocols",
        description="Serve one model (default: from the local workspace's MLflow registry) with KServe's "
        "V1 and V2 (Open Inference Protocol) endpoints, dynamic batching and Prometheus /metrics.",
    )
    add_serve_arguments(serve_cmd)
    serve_cmd.set_defaults(func=run_serve)
    from kfops.serving.router_cli import add_route_command

    add_route_command(sub)


def build_parser() -> argparse.ArgumentParser:
    """``python -m kfops.serving``: what a serving image runs (no workspace; the registry comes from the
    tracking URI, or the model is a folder)."""
    parser = argparse.ArgumentParser(prog="python -m kfops.serving", description=add_serve_command.__doc__)
    add_serve_arguments(parser, workspace=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    from kfops.components.contracts import KfopsError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["route"]:  # python -m kfops.serving route ...: the router alone (a router InferenceService)
        from kfops.serving.router_cli import route_main

        return route_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return run_serve(args)
    except KfopsError as err:
        print(f"kfops serve: {err}", flush=True)
        return 2
