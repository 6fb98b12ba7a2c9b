"""``kfops retrain``: the continuous-training loop once, locally: monitor, then (on drift) the training pipeline.

The same steps as ``pipelines/continuous_training.py`` on a cluster: the current window (payload logs or any
dataset) is compared with the champion's training data (or ``--reference``); when the dataset drifted (or
without ``--if-drift``, always) the training pipeline runs on ``--data`` through kfp.local, and its gate judges
the new model against the champion re-scored on the new test split: a blessed model becomes champion, a worse one
is refused and the champion stays. Exit codes: 0 done (retrained, or no drift); 1 the new model was not blessed;
2 bad input.
"""

from __future__ import annotations

import time

EXIT_NOT_BLESSED = 1


def cmd_retrain(args) -> int:
    from kfops.cli.console import EXIT_USER_ERROR, make_console
    from kfops.cli.run import cmd_run
    from kfops.components.contracts import ALIAS_CHAMPION, KfopsError
    from kfops.components.monitor.columns import DriftOptions
    from kfops.components.monitor.logic import monitor
    from kfops.components.workspace import workspace
    from kfops.pipelines.training import DEFAULT_MODEL_NAME

    console = make_console()
    ws = workspace(args.workspace)
    try:
        model_name = args.model_name or _workspace_model(ws.tracking_uri(), DEFAULT_MODEL_NAME)
    except KfopsError as err:
        console.print(f"[red bold]error[/]: {err}")
        return EXIT_USER_ERROR
    # The run trains the model that was monitored, whatever the new data file is called.
    args.model_name = model_name
    output = ws.root / "monitor" / time.strftime("%Y%m%d-%H%M%S")
    console.print(f"[bold]kfops retrain[/] · workspace [cyan]{ws.root}[/] · model {model_name}")
    try:
        outcome = monitor(
            args.current,
            output,
            args.reference or "",
            model=f"{model_name}@{ALIAS_CHAMPION}",
            tracking_uri=ws.tracking_uri(),
            artifact_store=args.artifact_store or ws.store,
            options=DriftOptions(stattest=args.stattest, drift_share=args.drift_share),
            html=not args.no_html,
        )
    except KfopsError as err:
        console.print(f"[red bold]error[/] in the monitor: {err}")
        return EXIT_USER_ERROR
    result = outcome.result
    console.print(f"  monitor: {result.headline()} · report {output}")
    if args.if_drift and not result.dataset_drift:
        console.print("  no dataset drift: nothing to retrain")
        return 0
    console.print("  retraining: " + ("the data drifted" if result.dataset_drift else "asked to (no --if-drift)"))
    code = cmd_run(args)
    if code != 0:
        return code
    from mlflow import MlflowClient

    client = MlflowClient(ws.tracking_uri())
    aliases = {k: str(v) for k, v in client.get_registered_model(model_name).aliases.items()}
    latest = max(int(v.version) for v in client.search_model_versions(f"name='{model_name}'"))
    if aliases.get(ALIAS_CHAMPION) != str(latest):
        console.print(
            f"  version {latest} was not promoted: champion stays version {aliases.get(ALIAS_CHAMPION, 'none')}"
        )
        return EXIT_NOT_BLESSED
    return 0


def _workspace_model(tracking_uri: str, default: str) -> str:
    """Without --model-name: the workspace's one registered model with a champion (the bundled demo's name when
    it has none). Several such models are a question only the user can answer."""
    from mlflow import MlflowClient

    from kfops.components.contracts import ALIAS_CHAMPION, KfopsError

    models = [m.name for m in MlflowClient(tracking_uri).search_registered_models() if ALIAS_CHAMPION in m.aliases]
    if len(models) == 1:
        return models[0]
    if len(models) > 1:
        raise KfopsError(
            f"the workspace has {len(models)} models with a champion ({', '.join(sorted(models))}): say which to "
            "monitor and retrain with --model-name"
        )
    return default


def add_commands(sub) -> None:
    from kfops.cli.run import add_training_flags

    retrain = sub.add_parser(
        "retrain",
        help="monitor a window for drift, then retrain (the continuous-training loop once, locally)",
        description="Compare a window of logged predictions (or any dataset) with the champion's training data; "
        "when it drifted (or always, without --if-drift) run the training pipeline on --data. The gate judges "
        "the new model against the champion: blessed, it becomes champion; worse, it is refused.",
    )
    loop = retrain.add_argument_group("monitor")
    loop.add_argument("--current", required=True, help="the window: payload-log folder or CSV/Parquet/JSONL file")
    loop.add_argument("--reference", help="reference data (default: the champion's training data snapshot)")
    loop.add_argument("--if-drift", action="store_true", help="retrain only when the dataset drifted")
    loop.add_argument("--stattest", default="auto", help="drift test for every feature (default: as Evidently picks)")
    loop.add_argument("--drift-share", type=float, default=0.5, help="share of drifted features that is drift")
    loop.add_argument("--no-html", action="store_true", help="skip the monitor's drift.html report")
    add_training_flags(retrain)
    retrain.set_defaults(func=cmd_retrain)
