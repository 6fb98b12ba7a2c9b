"""``kfops submit``, ``kfops upload``, ``kfops schedule`` (Kubeflow Pipelines) and ``kfops platform`` (manifests).

The work is in ``kfops.pipelines.submit`` and ``kfops.platform_manifests``; this module parses flags and prints.
kfp is imported only when a command runs, so ``kfops --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_PROBLEMS = 2
EXIT_RUN_FAILED = 1


# ------------------------------------------------------------------------------------------------ shared flags
def _connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("endpoint")
    group.add_argument(
        "--host",
        default=os.environ.get("KFOPS_KFP_HOST"),
        help="Kubeflow Pipelines URL, e.g. http://localhost:8080 or https://kubeflow.example.com/pipeline "
        "(default: $KFOPS_KFP_HOST)",
    )
    group.add_argument(
        "--token-file", help="file holding a bearer token (default: the KFOPS_KFP_TOKEN environment variable)"
    )
    group.add_argument(
        "--namespace",
        default=os.environ.get("KFOPS_KFP_NAMESPACE"),
        help="Kubeflow profile namespace (required by multi-user Kubeflow; default: $KFOPS_KFP_NAMESPACE)",
    )
    group.add_argument("--ui-host", help="base URL for the printed links (default: --host)")
    group.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the endpoint's first answer")
    group.add_argument("--insecure", action="store_true", help="do not verify the endpoint's TLS certificate")


def _pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pipeline", metavar="PIPELINE", help="compiled pipeline YAML, or a suite pipeline: training, deployment, ..."
    )


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    from kfops.pipelines.submit import DEFAULT_EXPERIMENT, DEFAULT_SERVICE_ACCOUNT

    group = parser.add_argument_group("run")
    group.add_argument(
        "--param", "-p", action="append", default=[], metavar="NAME=VALUE", help="a pipeline argument (repeatable)"
    )
    group.add_argument("--params-file", help="YAML or JSON mapping of pipeline arguments (--param wins)")
    group.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment (default {DEFAULT_EXPERIMENT})")
    group.add_argument(
        "--service-account",
        default=DEFAULT_SERVICE_ACCOUNT,
        help=f"service account of the run's pods (default {DEFAULT_SERVICE_ACCOUNT}, manifests/base/rbac; "
        "'' for the backend's default)",
    )
    caching = group.add_mutually_exclusive_group()
    caching.add_argument("--no-cache", dest="enable_caching", action="store_false", default=None)
    caching.add_argument("--cache", dest="enable_caching", action="store_true")


def _session(args):
    from kfops.pipelines.submit import KfpSession
    from kfops.pipelines.submit_inputs import read_token

    token = read_token(args.token_file, os.environ)
    return KfpSession(
        args.host,
        token=token,
        namespace=args.namespace,
        ui_host=args.ui_host,
        timeout_s=args.timeout,
        verify_ssl=not args.insecure,
    )


def _package(args):
    from kfops.pipelines.submit_inputs import parse_arguments, read_package, resolve_pipeline

    package = read_package(resolve_pipeline(args.pipeline))
    arguments = parse_arguments(package, getattr(args, "param", None), getattr(args, "params_file", None))
    return package, arguments


# ------------------------------------------------------------------------------------------------ commands
def cmd_submit(args) -> int:
    package, arguments = _package(args)  # bad input stops here, before any request
    session = _session(args)
    run, uploaded = session.submit(
        package,
        arguments,
        experiment=args.experiment,
        run_name=args.run_name,
        service_account=args.service_account,
        pipeline_root=args.pipeline_root,
        enable_caching=args.enable_caching,
        upload=args.upload,
    )
    print(f"Submitted {package.name} ({package.path}) to {session.host}")
    if uploaded:
        print(f"  pipeline    {uploaded.pipeline_name} version {uploaded.version_name} ({uploaded.version_id})")
    print(f"  experiment  {run.experiment_name} ({run.experiment_id})")
    print(f"  run         {run.run_name} ({run.run_id})")
    print(f"Run details: {run.link}")
    if not args.wait:
        return 0
    state = session.wait(run.run_id, timeout_s=args.wait_timeout, poll_s=args.poll)
    print(f"Run {run.run_id} finished: {state}")
    return 0 if state == "SUCCEEDED" else EXIT_RUN_FAILED


def cmd_upload(args) -> int:
    package, _ = _package(args)
    session = _session(args)
    result = session.upload(package, name=args.name, version=args.version, description=args.description)
    if result.created_pipeline:
        what = "new pipeline"
    elif result.created_version:
        what = "new version"
    else:
        what = "already uploaded"
    print(f"Uploaded {package.path} to {session.host}: {what}")
    print(f"  pipeline    {result.pipeline_name} ({result.pipeline_id})")
    print(f"  version     {result.version_name} ({result.version_id})")
    print(f"Pipeline details: {result.link}")
    return 0


def cmd_schedule(args) -> int:
    from kfops.pipelines.submit_inputs import check_cron, parse_interval

    cron = check_cron(args.cron) if args.cron else None
    interval = parse_interval(args.every) if args.every else None
    package, arguments = _package(args)
    session = _session(args)
    result = session.schedule(
        package,
        arguments,
        name=args.name or package.name,
        cron=cron,
        interval_s=interval,
        experiment=args.experiment,
        max_concurrency=args.max_concurrency,
        catchup=args.catchup,
        start_time=args.start,
        end_time=args.end,
        service_account=args.service_account,
        enable_caching=args.enable_caching,
        description=args.description,
    )
    print(f"Scheduled {package.name} on {session.host}: {result.trigger}")
    print(f"  pipeline    {result.upload.pipeline_name} version {result.upload.version_name}")
    print(f"  recurring   {result.name} ({result.recurring_run_id})")
    print(f"Recurring run details: {result.link}")
    return 0


def cmd_platform_check(args) -> int:
    from kfops.platform_manifests import check_overlay

    failed = False
    for overlay in args.overlays:
        objects, problems = check_overlay(overlay, args.secrets_file)
        if problems:
            failed = True
            print(f"{overlay}: {len(problems)} problem(s) in {len(objects)} objects", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
        else:
            print(
                f"{overlay}: {len(objects)} objects, Secret references, security settings and endpoints OK; every "
                "reference of the suite's pipelines, generated objects and pods resolves"
            )
    return EXIT_PROBLEMS if failed else 0


def cmd_platform_secrets(args) -> int:
    from kfops.platform_manifests import find_secrets_file, load_secret_specs, refuse_terminal, secret_manifests

    specs = load_secret_specs(args.secrets_file or find_secrets_file("manifests"))
    text = secret_manifests(specs, args.namespace, os.environ, generate=args.generate, only=args.only)
    refuse_terminal()
    sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------------------------------ parser
def add_commands(subparsers) -> None:
    """Add ``submit``, ``upload``, ``schedule`` and ``platform`` to the ``kfops`` parser's subparsers."""
    submit = subparsers.add_parser(
        "submit",
        help="start a run of a compiled pipeline on Kubeflow Pipelines and print its link",
        description="Start one run on a Kubeflow Pipelines endpoint. Flags are checked, then the endpoint and "
        "the token, before anything is created.",
    )
    _pipeline_arguments(submit)
    _connection_arguments(submit)
    _run_arguments(submit)
    submit.add_argument("--run-name", help="the run's name (default: pipeline name and time)")
    submit.add_argument("--pipeline-root", help="where the run's artifacts go (default: the backend's)")
    submit.add_argument(
        "--upload", action="store_true", help="run it as an uploaded pipeline version (uploaded if new)"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 unless it succeeded")
    submit.add_argument("--wait-timeout", type=float, default=4 * 3600, help="seconds --wait waits (default 4 h)")
    submit.add_argument("--poll", type=float, default=15.0, help=argparse.SUPPRESS)
    submit.set_defaults(func=cmd_submit)

    upload = subparsers.add_parser(
        "upload",
        help="upload a compiled pipeline, or a new version of it, to Kubeflow Pipelines",
        description="Upload a pipeline: a new pipeline the first time, then one version per distinct file "
        "(named <kfops version>-<content hash> unless --version says otherwise; the same file is not uploaded "
        "twice).",
    )
    _pipeline_arguments(upload)
    _connection_arguments(upload)
    upload.add_argument("--name", help="pipeline name (default: the name compiled into the YAML)")
    upload.add_argument("--version", help="version name (default: <kfops version>-<sha256 prefix of the file>)")
    upload.add_argument("--description")
    upload.set_defaults(func=cmd_upload)

    schedule = subparsers.add_parser(
        "schedule",
        help="create a recurring run (cron or interval) of a compiled pipeline",
        description="Upload the pipeline version (if new) and create a recurring run of it. Continuous training: "
        "`kfops schedule continuous-training --every 1d -p current_uri=s3://kfops/payload-logs/fraud-detector "
        "-p data_uri=s3://kfops/incoming/latest.parquet` (retrains when the live data drifted); on a calendar: "
        "`kfops schedule training --cron '0 0 3 * * *' -p data_uri=...`.",
    )
    _pipeline_arguments(schedule)
    _connection_arguments(schedule)
    _run_arguments(schedule)
    when = schedule.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="6-field cron, seconds first: '0 0 3 * * *' is 03:00 every day")
    when.add_argument("--every", help="interval: 30m, 6h, 1d or seconds")
    schedule.add_argument("--name", help="recurring run name (default: the pipeline's name)")
    schedule.add_argument("--description")
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    schedule.add_argument(
        "--catchup", action="store_true", help="backfill intervals missed while paused (default: only the latest)"
    )
    schedule.add_argument("--start", help="RFC 3339 time of the first run (default: now)")
    schedule.add_argument("--end", help="RFC 3339 time after which no run starts")
    schedule.set_defaults(func=cmd_schedule)

    platform = subparsers.add_parser("platform", help="check the Kubernetes manifests; print the Secrets to create")
    platform_sub = platform.add_subparsers(dest="platform_command", required=True)
    check = platform_sub.add_parser(
        "check",
        help="render overlays and check references, container security and endpoints",
        description="Render each overlay with `kubectl kustomize` (no cluster) and fail, listing every problem, "
        "before anything is applied: container security, endpoints, and every Secret, ConfigMap, ServiceAccount, "
        "PVC, Service and port that the overlay's pods, the compiled pipelines, the objects they create "
        "(InferenceService, Katib Experiment, TrainJob), Feast's config and the router example refer to.",
    )
    check.add_argument("overlays", nargs="+", metavar="OVERLAY", help="e.g. manifests/overlays/local")
    check.add_argument(
        "--secrets-file",
        help="the list of out-of-band Secrets (default: the nearest secrets.yaml); Feast's config and the router "
        "example are read from the folder that holds it",
    )
    check.set_defaults(func=cmd_platform_check)
    secrets = platform_sub.add_parser(
        "secrets",
        help="print the Secrets the manifests need, for `| kubectl apply -f -`",
        description="Print manifests/secrets.yaml's Secrets (those the platform does not provide) as YAML, each "
        "value from the environment variable listed for its key, or random with --generate. Refuses to print "
        "to a terminal.",
    )
    secrets.add_argument("--namespace", required=True)
    secrets.add_argument("--generate", action="store_true", help="random values for unset variables (test clusters)")
    secrets.add_argument("--only", action="append", metavar="NAME", help="only this Secret (repeatable)")
    secrets.add_argument("--secrets-file", help="default: manifests/secrets.yaml")
    secrets.set_defaults(func=cmd_platform_secrets)
