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

from collections.abc import Mapping
from typing import Any

from kfp import dsl

from kfops.components.contracts import ALIAS_CHALLENGER
from kfops.components.deploy.component import deploy
from kfops.components.kfp_support import DEFAULT_IMAGE, component_op
from kfops.components.register.component import promote
from kfops.components.rollout.component import rollout
from kfops.pipelines.parameters import DEPLOYMENT_PARAMETERS, takes
from kfops.pipelines.steps import inputs_from, step

PIPELINE_NAME = "kfops-deployment"
DEFAULT_MODEL_NAME = "fraud-detector"


def add_deployment_steps(image: str, params: Mapping[str, Any], **given: Any) -> dsl.PipelineTask:
    """deploy -> (canary) rollout | (no canary) promote, inside the pipeline being defined. Each step takes its
    inputs from ``given``, else from the pipeline parameters of the same names in ``params`` (the deployment
    pipeline's parameters: ``model_name``, ``version``, ``steps``, ...)."""
    params = {**params, **given}
    deploy_op, rollout_op, promote_op = (component_op(c, image) for c in (deploy, rollout, promote))
    # The cluster and the registry are state outside KFP: always read them, never replay a cached answer.
    deployed = step(deploy_op, "deploy", cache=False, **inputs_from(deploy_op, params))
    with dsl.If(deployed.outputs["operation"] == "canary", name="canary"):
        step(rollout_op, "rollout", cache=False, **inputs_from(rollout_op, params))
    with dsl.If(deployed.outputs["operation"] != "canary", name="no-canary"):
        version, metric = deployed.outputs["deployed_version"], params["promotion_metric"]
        step(promote_op, "promote", cache=False, **inputs_from(promote_op, params, version=version, metric=metric))
    return deployed


def build_deployment_pipeline(image: str = DEFAULT_IMAGE):
    """The deployment pipeline function for ``image``."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Serve a blessed model version on KServe and roll it out as a progressive canary, promoting "
        "it in the registry at the last step or rolling it back at the first breach.",
    )
    @takes(DEPLOYMENT_PARAMETERS)
    def deployment_pipeline(
        model_name: str = DEFAULT_MODEL_NAME,
        version: str = ALIAS_CHALLENGER,
        promotion_metric: str = "f1_macro",
        mlflow_tracking_uri: str = "",
        **deployment,
    ):
        add_deployment_steps(image, {**locals(), **deployment})

    return deployment_pipeline


deployment_pipeline = build_deployment_pipeline()
