"""``kfops deploy``: serve a registered, blessed model version with a KServe InferenceService.

``kfops deploy --dry-run --output FILE`` writes the InferenceService a first deploy would create, with no cluster.
Without ``--dry-run`` it applies to the cluster of the kubeconfig (or the in-cluster service account) and waits
until KServe reports the traffic split. The model comes from ``--tracking-uri`` (default: MLFLOW_TRACKING_URI,
else the local workspace's sqlite store). MLflow and kubernetes are imported only when the command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT_MODEL = "fraud-detector@champion"  # the training pipeline's model name (pipelines.training), its champion


def _write(path: str, manifest: dict) -> None:
    import yaml

    text = (
        json.dumps(manifest, indent=2) + "\n"
        if path.endswith(".json")
        else yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
    )
    if path == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")


def cmd_deploy(args) -> int:
    from dataclasses import asdict

    from kfops.cli.console import tracking_uri
    from kfops.components.contracts import ALIAS_CHAMPION, KfopsError
    from kfops.components.contracts.delivery import DeploySpec
    from kfops.components.deploy.logic import deploy
    from kfops.components.registry import parse_model_ref

    if args.dry_run and not args.output:
        raise KfopsError("--dry-run writes the InferenceService to --output FILE (or - for stdout): give one")
    name, kind, value = parse_model_ref(args.model)
    spec = DeploySpec(
        model_name=name,
        version=value if kind in ("alias", "version") else ALIAS_CHAMPION,
        name=args.name or "",
        namespace=args.namespace or "",
        mode=args.mode,
        canary_percent=args.canary_percent,
        runtime=args.runtime,
        image=args.image or "",
        cpu_request=args.cpu_request,
        cpu_limit=args.cpu_limit,
        memory_request=args.memory_request,
        memory_limit=args.memory_limit,
        gpus=args.gpus,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        scale_metric=args.scale_metric or "",
        scale_target=args.scale_target,
        service_account=args.service_account,
        logger_url=args.logger_url or "",
        logger_mode=args.logger_mode,
    )
    spec.check()  # before anything is read or connected
    api = None
    if not args.dry_run:
        from kfops.components.kube import connect

        api = connect(context=args.context or "")
    result = deploy(
        spec,
        api=api,
        tracking_uri=tracking_uri(args),
        timeout_s=args.timeout,
        poll_s=args.poll_seconds,
        dry_run=args.dry_run,
    )
    if args.output:
        _write(args.output, result.manifest)
    if args.json:
        summary = {k: v for k, v in asdict(result).items() if k != "manifest" or not args.output}
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
        return 0
    from kfops.cli.console import make_console

    console = make_console(sys.stderr if args.output == "-" else None)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    where = f"{result.namespace + '/' if result.namespace else ''}{result.name}"
    what = f"{result.model_name} version {result.version} ({result.storage_uri})"
    if args.dry_run:
        target = "stdout" if args.output == "-" else args.output
        console.print(f"[green]✓[/] InferenceService {where} for {what} written to {target} (dry run, nothing applied)")
        return 0
    if result.operation == "canary":
        share = f"{args.canary_percent}%"
        stable = f"version {result.stable_version or '?'} ({result.stable_storage_uri})"
        console.print(f"[green]✓[/] {where}: canary {what} at {share}, stable {stable} takes the rest")
    else:
        console.print(f"[green]✓[/] {where}: {result.operation} {what}, all traffic")
    if result.url:
        console.print(f"  URL {result.url}")
    return 0


def add_commands(subparsers) -> None:
    """Add ``deploy`` to the ``kfops`` parser's subparsers."""
    deploy = subparsers.add_parser(
        "deploy",
        help="serve a blessed model version with a KServe InferenceService (or --dry-run it to a file)",
        description="Serve a registered, blessed model version with a KServe InferenceService. With no "
        "InferenceService there it is created with all traffic; beside another version it starts a canary at "
        "--canary-percent; then it waits until KServe reports that split. --dry-run --output FILE writes the "
        "InferenceService it would create, without a cluster.",
    )
    what = deploy.add_argument_group("what")
    what.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="NAME@ALIAS|NAME/VERSION",
        help=f"registered model version (default {DEFAULT_MODEL}; NAME alone means NAME@champion)",
    )
    what.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the workspace's)"
    )
    what.add_argument("--workspace", help="local workspace folder whose mlflow.db to use (default ./.kfops)")
    where = deploy.add_argument_group("where")
    where.add_argument("--name", help="InferenceService name (default: the model name)")
    where.add_argument("--namespace", help="namespace (default: the kubeconfig context's; none in a dry run)")
    where.add_argument("--context", help="kubeconfig context (default: the current one)")
    where.add_argument(
        "--mode",
        choices=["knative", "standard"],
        default="knative",
        help="KServe deployment mode, which picks the canary mechanism: knative (canaryTrafficPercent) or "
        "standard (spec.canary, KServe >= 0.20); default knative",
    )
    where.add_argument(
        "--canary-percent",
        type=int,
        default=10,
        help="traffic share of a new version beside the serving one (default 10; 100 replaces it at once)",
    )
    how = deploy.add_argument_group("serving")
    how.add_argument(
        "--runtime", default="kfops-pytorch-tabular", help="ServingRuntime (default kfops-pytorch-tabular)"
    )
    how.add_argument("--image", help="serving image instead of the runtime's (same arguments, env and probes)")
    how.add_argument("--cpu-request", default="1")
    how.add_argument("--cpu-limit", default="1", help="whole CPUs: the server runs one torch thread per CPU of it")
    how.add_argument("--memory-request", default="1Gi")
    how.add_argument("--memory-limit", default="2Gi")
    how.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu limit (needs a CUDA serving --image)")
    how.add_argument("--min-replicas", type=int, default=1)
    how.add_argument("--max-replicas", type=int, default=3)
    how.add_argument("--scale-metric", choices=["cpu", "memory", "concurrency", "rps"], help="autoscaling metric")
    how.add_argument("--scale-target", type=int, default=0, help="autoscaling target for --scale-metric")
    how.add_argument(
        "--service-account",
        default="kfops-model-reader",
        help="service account whose secret holds the S3 credentials (default kfops-model-reader; '' for none)",
    )
    how.add_argument("--logger-url", help="payload logger: send CloudEvents of requests/responses here")
    how.add_argument("--logger-mode", choices=["all", "request", "response"], default="all")
    run = deploy.add_argument_group("run")
    run.add_argument("--dry-run", action="store_true", help="write the InferenceService to --output; no cluster")
    run.add_argument("--output", help="write the InferenceService (applied, or the dry run's) here: .yaml, .json or -")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for KServe (default 600)")
    run.add_argument("--poll-seconds", type=float, default=5.0, help="seconds between status reads (default 5)")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    deploy.set_defaults(func=cmd_deploy)
