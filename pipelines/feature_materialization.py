"""The feature-materialisation pipeline: keep the online store (Redis in a cluster) fresh from the offline data.

One ``materialize`` step: optionally re-point the feature source at a stored data version (``data_sha256``, e.g.
the training pipeline's ``version_data`` output), then load the online store, incrementally by default, and push
the freshness gauges that the ``KfopsFeatureMaterializationLag`` alert reads. Schedule it as a recurring run
(hourly, say) with the default parameters; run it once with ``start_time`` to backfill a window.
"""

from kfp import dsl

from kfops.components.features.component import materialize
from kfops.components.kfp_support import DEFAULT_IMAGE, component_op
from kfops.pipelines.parameters import DEFAULT_ARTIFACT_STORE, described
from kfops.pipelines.steps import inputs_from, step

PIPELINE_NAME = "kfops-feature-materialization"
# manifests/feature-store/feature_store.yaml, copied to MinIO (manifests/feature-store/README.md).
DEFAULT_FEATURE_REPO = "s3://kfops/feature-store"


def build_feature_materialization_pipeline(image: str = DEFAULT_IMAGE):
    """The feature-materialisation pipeline function for ``image``."""
    materialize_op = component_op(materialize, image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Load the feature store's online store from its offline Parquet data (incrementally, or over "
        "a window) and push its freshness to the Pushgateway.",
    )
    @described
    def feature_materialization_pipeline(
        feature_repo: str = DEFAULT_FEATURE_REPO,
        artifact_store: str = DEFAULT_ARTIFACT_STORE,
        data_sha256: str = "",
        start_time: str = "",
        end_time: str = "",
        feature_views: list = [],  # noqa: B006 - KFP pipeline defaults are declarations, never mutated
        pushgateway: str = "",
    ):
        # The online store is state outside KFP, and "now" moves: never a cached materialisation.
        step(materialize_op, "materialize", cache=False, **inputs_from(materialize_op, locals()))

    return feature_materialization_pipeline
