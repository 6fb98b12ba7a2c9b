"""The deployment pipeline: deploy a blessed version, then roll its canary out (or promote a first deployment).

``deploy`` serves the version on a KServe InferenceService: created at 100% when none exists yet (or with
``canary_percent`` 100), else as a canary at ``canary_percent`` beside the version serving now. Then:

- a canary: ``rollout`` moves it through ``steps`` (judged against the stable model at each) and promotes it at
  the last one (registry ``champion`` moves then), or rolls it back at the first breach;
- no canary (a first deployment, a replacement, the same version again): ``promote`` makes the version that
  now takes all the traffic the registry's ``champion``.

``add_deployment_steps`` is the same graph for use inside another pipeline: the training pipeline joins it
behind the gate's blessing (``deploy=True``).
"""

from kfp import dsl

from kfops.components.contracts import ALIAS_CHALLENGER
from kfops.components.deploy.component import deploy
from kfops.components.kfp_support import DEFAULT_IMAGE, component_op
from kfops.components.register.component import promote
from kfops.components.rollout.component import rollout

PIPELINE_NAME = "kfops-deployment"
DEFAULT_MODEL_NAME = "fraud-detector"


def add_deployment_steps(
    image: str,
    *,
    model_name,
    version,
    isvc_name,
    namespace,
    deployment_mode,
    canary_percent,
    service_account,
    steps,
    window_seconds,
    prometheus_url,
    max_error_rate,
    max_p99_ratio,
    min_requests,
    promotion_metric,
    mlflow_tracking_uri,
):
    """deploy -> (canary) rollout | (no canary) promote, inside the pipeline being defined."""
    deployed = component_op(deploy, image)(
        model_name=model_name,
        version=version,
        isvc_name=isvc_name,
        namespace=namespace,
        deployment_mode=deployment_mode,
        canary_percent=canary_percent,
        service_account=service_account,
        mlflow_tracking_uri=mlflow_tracking_uri,
    ).set_display_name("deploy")
    # The cluster is state outside KFP: always read it, never replay a cached answer.
    deployed.set_caching_options(False)
    with dsl.If(deployed.outputs["operation"] == "canary", name="canary"):
        rolled = component_op(rollout, image)(
            model_name=model_name,
            isvc_name=isvc_name,
            namespace=namespace,
            steps=steps,
            window_seconds=window_seconds,
            prometheus_url=prometheus_url,
            max_error_rate=max_error_rate,
            max_p99_ratio=max_p99_ratio,
            min_requests=min_requests,
            promotion_metric=promotion_metric,
            mlflow_tracking_uri=mlflow_tracking_uri,
        ).set_display_name("rollout")
        rolled.set_caching_options(False)
    with dsl.If(deployed.outputs["operation"] != "canary", name="no-canary"):
        promoted = component_op(promote, image)(
            model_name=model_name,
            version=deployed.outputs["deployed_version"],
            metric=promotion_metric,
            mlflow_tracking_uri=mlflow_tracking_uri,
        ).set_display_name("promote")
        promoted.set_caching_options(False)
    for task in (deployed, rolled, promoted):
        task.set_env_variable("KFOPS_IMAGE", image)
    return deployed


def build_deployment_pipeline(image: str = DEFAULT_IMAGE):
    """The deployment pipeline function for ``image``."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Serve a blessed model version on KServe and roll it out as a progressive canary, promoting "
        "it in the registry at the last step or rolling it back at the first breach.",
    )
    def deployment_pipeline(
        model_name: str = DEFAULT_MODEL_NAME,
        version: str = ALIAS_CHALLENGER,
        isvc_name: str = "",
        namespace: str = "",
        deployment_mode: str = "knative",
        canary_percent: int = 10,
        service_account: str = "kfops-model-reader",
        steps: list = [10, 25, 50, 100],  # noqa: B006 - KFP pipeline defaults are declarations, never mutated
        window_seconds: float = 300.0,
        prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090",
        max_error_rate: float = 0.01,
        max_p99_ratio: float = 1.5,
        min_requests: int = 50,
        promotion_metric: str = "f1_macro",
        mlflow_tracking_uri: str = "",
    ):
        add_deployment_steps(
            image,
            model_name=model_name,
            version=version,
            isvc_name=isvc_name,
            namespace=namespace,
            deployment_mode=deployment_mode,
            canary_percent=canary_percent,
            service_account=service_account,
            steps=steps,
            window_seconds=window_seconds,
            prometheus_url=prometheus_url,
            max_error_rate=max_error_rate,
            max_p99_ratio=max_p99_ratio,
            min_requests=min_requests,
            promotion_metric=promotion_metric,
            mlflow_tracking_uri=mlflow_tracking_uri,
        )

    return deployment_pipeline


deployment_pipeline = build_deployment_pipeline()
