"""Sending the suite's compiled pipelines to a Kubeflow Pipelines endpoint: runs, uploads, recurring runs.

``kfops submit`` / ``kfops upload`` / ``kfops schedule`` call this module; it drives ``kfp.Client``. Everything
that can be checked before the first write is checked first, so a bad call creates nothing:

- the pipeline: a compiled YAML file, or a suite pipeline by name (``training``, ``deployment``, ...);
- the arguments: every ``--param NAME=VALUE`` must be one of the pipeline's parameters and parse as its type,
  and every required parameter must be given;
- the endpoint: one health check (no retries) says whether the host is Kubeflow Pipelines at all, and whether
  it is multi-user (then a namespace is required); one authenticated read (listing experiments) says whether
  the token is accepted, before anything is created.

The token comes from ``--token-file`` or the ``KFOPS_KFP_TOKEN`` environment variable (a Kubeflow service
account token, or a Dex/OIDC id token) and is sent as ``Authorization: Bearer``. No token: no header, for
a port-forwarded or in-cluster endpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

from kfops.components.contracts import KfopsError
from kfops.pipelines.submit_inputs import TOKEN_ENV, PipelinePackage, validate_host

DEFAULT_EXPERIMENT = "kfops"
DEFAULT_SERVICE_ACCOUNT = "kfops-pipeline-runner"  # manifests/base/rbac/pipeline-runner.yaml


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class UploadResult:
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    created_pipeline: bool
    created_version: bool
    link: str


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    link: str


@dataclass(frozen=True)
class ScheduleResult:
    recurring_run_id: str
    name: str
    experiment_id: str
    upload: UploadResult
    trigger: str
    link: str


def _filter_by_name(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _api_message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(body or "")
        if isinstance(parsed, dict):
            return str(parsed.get("message") or parsed.get("error") or body).strip()
    except ValueError:
        pass
    text = str(body or err.reason or "").strip()
    return text[:300] + ("..." if len(text) > 300 else "")


# ------------------------------------------------------------------------------------------------ session
class KfpSession:
    """A checked connection to one Kubeflow Pipelines endpoint, with a ``kfp.Client`` for the writes."""

    def __init__(
        self,
        host: str,
        token: str | None = None,
        namespace: str | None = None,
        ui_host: str | None = None,
        timeout_s: float = 10.0,
        verify_ssl: bool = True,
    ):
        self.host = validate_host(host)
        self.token = token
        self.namespace = namespace or None
        self.ui_base = (ui_host or self.host).rstrip("/")
        self.timeout_s = timeout_s
        self.verify_ssl = verify_ssl
        self.multi_user = self._preflight()
        self.client = self._client()

    # -------------------------------------------------------------------------------------------- checks
    def _error(self, what: str, err) -> KfopsError:
        status = getattr(err, "status", 0) or 0
        where = f"Kubeflow Pipelines at {self.host}"
        if status in (301, 302, 303, 307, 308):
            location = (err.headers or {}).get("Location", "") if getattr(err, "headers", None) else ""
            return KfopsError(
                f"{what}: {where} redirected to {location or 'another page'} (a login page): it needs a token; "
                f"set {TOKEN_ENV} or pass --token-file"
            )
        if status == 401:
            hint = "the token was rejected" if self.token else f"it needs a token: set {TOKEN_ENV} or pass --token-file"
            return KfopsError(f"{what}: {where} answered 401 Unauthorized: {hint}")
        if status == 403:
            scope = f"namespace '{self.namespace}'" if self.namespace else "this endpoint"
            return KfopsError(
                f"{what}: {where} answered 403 Forbidden: the token is not allowed to use {scope} ({_api_message(err)})"
            )
        if status == 404:
            return KfopsError(
                f"{what}: {where} has no such API (404): --host must be the Pipelines base URL, "
                "e.g. http://localhost:8080 or https://kubeflow.example.com/pipeline"
            )
        if status == 0:
            return KfopsError(f"{what}: cannot connect to {where}: {err.reason}")
        return KfopsError(f"{what}: {where} answered {status}: {_api_message(err)}")

    def _preflight(self) -> bool:
        """One health check and one authenticated read, no retries; returns whether KFP is multi-user."""
        import kfp_server_api
        import urllib3

        config = kfp_server_api.Configuration(host=self.host)
        config.retries = False  # fail at once: this is the reachability check
        config.verify_ssl = self.verify_ssl
        if self.token:
            config.api_key["authorization"] = self.token
            config.api_key_prefix["authorization"] = "Bearer"
        api_client = kfp_server_api.ApiClient(config)
        try:
            try:
                response = kfp_server_api.HealthzServiceApi(api_client).healthz_service_get_healthz(
                    _preload_content=False, _request_timeout=self.timeout_s
                )
            except kfp_server_api.ApiException as err:
                raise self._error("health check", err) from err
            except (urllib3.exceptions.HTTPError, OSError) as err:
                reason = getattr(err, "reason", None) or err
                raise KfopsError(f"cannot reach Kubeflow Pipelines at {self.host}: {reason}") from err
            try:
                health = json.loads(response.data or b"")
            except ValueError:
                health = None
            if not isinstance(health, dict):
                raise KfopsError(
                    f"{self.host} answered the health check with something that is not the Kubeflow Pipelines API "
                    f"({response.getheader('Content-Type') or 'no content type'}): is --host the Pipelines URL, "
                    "and is a login page in front of it (then pass a token)?"
                )
            multi_user = bool(health.get("multi_user"))
            if multi_user and not self.namespace:
                raise KfopsError(
                    f"Kubeflow Pipelines at {self.host} is multi-user: pass --namespace (your Kubeflow profile "
                    "namespace, where the suite's runs and Secrets live)"
                )
            extra = {"namespace": self.namespace} if self.namespace else {}
            try:
                kfp_server_api.ExperimentServiceApi(api_client).experiment_service_list_experiments(
                    page_size=1, _request_timeout=self.timeout_s, **extra
                )
            except kfp_server_api.ApiException as err:
                raise self._error("checking access", err) from err
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise KfopsError(f"cannot reach Kubeflow Pipelines at {self.host}: {err}") from err
            return multi_user
        finally:
            api_client.close()

    def _client(self):
        import kfp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2+"
            with contextlib.redirect_stdout(io.StringIO()):
                return kfp.Client(
                    host=self.host,
                    existing_token=self.token,
                    namespace=self.namespace or "kubeflow",
                    ui_host=self.ui_base,
                    verify_ssl=self.verify_ssl,
                )

    def _call(self, what: str, method, *args, **kwargs):
        """A kfp.Client call with its printed links silenced and API errors made readable."""
        import kfp_server_api
        import urllib3

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return method(*args, **kwargs)
        except kfp_server_api.ApiException as err:
            raise self._error(what, err) from err
        except (urllib3.exceptions.HTTPError, OSError) as err:
            raise KfopsError(f"{what}: lost the connection to Kubeflow Pipelines at {self.host}: {err}") from err

    # -------------------------------------------------------------------------------------------- links
    def link(self, *parts: str) -> str:
        return f"{self.ui_base}/#/" + "/".join(parts)

    # -------------------------------------------------------------------------------------------- reads
    def find_pipeline(self, name: str) -> str | None:
        listed = self._call(
            "finding the pipeline", self.client.list_pipelines, page_size=2, filter=_filter_by_name(name)
        )
        pipelines = listed.pipelines or []
        if len(pipelines) > 1:
            raise KfopsError(f"more than one pipeline is named '{name}': pass --name with a unique one")
        return pipelines[0].pipeline_id if pipelines else None

    def find_version(self, pipeline_id: str, version: str):
        listed = self._call(
            "finding the pipeline version",
            self.client.list_pipeline_versions,
            pipeline_id=pipeline_id,
            page_size=1,
            filter=_filter_by_name(version),
        )
        versions = listed.pipeline_versions or []
        return versions[0] if versions else None

    def find_experiment(self, name: str):
        listed = self._call(
            "finding the experiment",
            self.client.list_experiments,
            page_size=1,
            filter=_filter_by_name(name),
            namespace=self.namespace,
        )
        experiments = listed.experiments or []
        return experiments[0] if experiments else None

    def find_recurring_run(self, experiment_id: str, name: str):
        listed = self._call(
            "finding recurring runs",
            self.client.list_recurring_runs,
            page_size=1,
            experiment_id=experiment_id,
            filter=_filter_by_name(name),
        )
        runs = listed.recurring_runs or []
        return runs[0] if runs else None

    # -------------------------------------------------------------------------------------------- writes
    def ensure_experiment(self, name: str):
        found = self.find_experiment(name)
        if found is not None:
            return found
        return self._call("creating the experiment", self.client.create_experiment, name=name, namespace=self.namespace)

    def upload(
        self,
        package: PipelinePackage,
        name: str | None = None,
        version: str | None = None,
        description: str | None = None,
    ) -> UploadResult:
        """The pipeline (created if new) with ``package`` as a version; a version of that name is reused."""
        name = name or package.name
        version = version or package.default_version
        description = description or package.description or None
        pipeline_id = self.find_pipeline(name)
        if pipeline_id is None:
            created = self._call(
                "uploading the pipeline",
                self.client.upload_pipeline,
                str(package.path),
                pipeline_name=name,
                description=description,
            )
            # KFP stores the first upload as the pipeline's first version, named after the pipeline.
            first = self._call(
                "reading the new pipeline's version",
                self.client.list_pipeline_versions,
                pipeline_id=created.pipeline_id,
                page_size=1,
            )
            first_version = (first.pipeline_versions or [None])[0]
            version_id = getattr(first_version, "pipeline_version_id", "") or ""
            return UploadResult(
                pipeline_id=created.pipeline_id,
                pipeline_name=name,
                version_id=version_id,
                version_name=getattr(first_version, "display_name", name) or name,
                created_pipeline=True,
                created_version=True,
                link=self.link("pipelines", "details", created.pipeline_id, "version", version_id),
            )
        existing = self.find_version(pipeline_id, version)
        if existing is not None:
            return UploadResult(
                pipeline_id=pipeline_id,
                pipeline_name=name,
                version_id=existing.pipeline_version_id,
                version_name=version,
                created_pipeline=False,
                created_version=False,
                link=self.link("pipelines", "details", pipeline_id, "version", existing.pipeline_version_id),
            )
        uploaded = self._call(
            "uploading the pipeline version",
            self.client.upload_pipeline_version,
            str(package.path),
            pipeline_version_name=version,
            pipeline_id=pipeline_id,
            description=description,
        )
        return UploadResult(
            pipeline_id=pipeline_id,
            pipeline_name=name,
            version_id=uploaded.pipeline_version_id,
            version_name=version,
            created_pipeline=False,
            created_version=True,
            link=self.link("pipelines", "details", pipeline_id, "version", uploaded.pipeline_version_id),
        )

    def submit(
        self,
        package: PipelinePackage,
        arguments: dict[str, Any],
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
        pipeline_root: str | None = None,
        enable_caching: bool | None = None,
        upload: bool = False,
    ) -> tuple[RunResult, UploadResult | None]:
        """Start one run of ``package`` (inline, or as an uploaded pipeline version with ``upload``)."""
        from datetime import UTC, datetime

        uploaded = self.upload(package) if upload else None
        found = self.ensure_experiment(experiment)
        run_name = run_name or f"{package.name} {datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
        source = (
            {"pipeline_id": uploaded.pipeline_id, "version_id": uploaded.version_id}
            if uploaded
            else {"pipeline_package_path": str(package.path)}
        )
        run = self._call(
            "creating the run",
            self.client.run_pipeline,
            experiment_id=found.experiment_id,
            job_name=run_name,
            params=arguments,
            pipeline_root=pipeline_root or None,
            enable_caching=enable_caching,
            service_account=service_account or None,
            **source,
        )
        result = RunResult(
            run_id=run.run_id,
            run_name=run_name,
            experiment_id=found.experiment_id,
            experiment_name=experiment,
            link=self.link("runs", "details", run.run_id),
        )
        return result, uploaded

    def schedule(
        self,
        package: PipelinePackage,
        arguments: dict[str, Any],
        name: str,
        cron: str | None = None,
        interval_s: int | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        max_concurrency: int = 1,
        catchup: bool = False,
        start_time: str | None = None,
        end_time: str | None = None,
        service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
        enable_caching: bool | None = None,
        description: str | None = None,
    ) -> ScheduleResult:
        """A recurring run of ``package`` as an uploaded pipeline version; an existing recurring run of the same
        name in the experiment is an error before anything is uploaded or created."""
        if (cron is None) == (interval_s is None):
            raise KfopsError("schedule: give exactly one of --cron and --every")
        if max_concurrency < 1:
            raise KfopsError(f"--max-concurrency must be at least 1, got {max_concurrency}")
        existing_experiment = self.find_experiment(experiment)
        if existing_experiment is not None:
            clash = self.find_recurring_run(existing_experiment.experiment_id, name)
            if clash is not None:
                raise KfopsError(
                    f"a recurring run named '{name}' already exists in experiment '{experiment}' "
                    f"({self.link('recurringrun', 'details', clash.recurring_run_id)}): disable or delete it first, "
                    "or pick another --name"
                )
        uploaded = self.upload(package)
        found = existing_experiment or self.ensure_experiment(experiment)
        trigger = {"cron_expression": cron} if cron else {"interval_second": interval_s}
        created = self._call(
            "creating the recurring run",
            self.client.create_recurring_run,
            experiment_id=found.experiment_id,
            job_name=name,
            description=description,
            start_time=start_time,
            end_time=end_time,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=arguments,
            pipeline_id=uploaded.pipeline_id,
            version_id=uploaded.version_id,
            enabled=True,
            enable_caching=enable_caching,
            service_account=service_account or None,
            **trigger,
        )
        return ScheduleResult(
            recurring_run_id=created.recurring_run_id,
            name=name,
            experiment_id=found.experiment_id,
            upload=uploaded,
            trigger=f"cron '{cron}'" if cron else f"every {interval_s} s",
            link=self.link("recurringrun", "details", created.recurring_run_id),
        )

    def wait(self, run_id: str, timeout_s: float, poll_s: float = 10.0) -> str:
        """Block until the run ends; its final state (SUCCEEDED, FAILED, ...)."""
        try:
            run = self._call(
                "waiting for the run",
                self.client.wait_for_run_completion,
                run_id,
                timeout=timeout_s,
                sleep_duration=poll_s,
            )
        except TimeoutError as err:
            raise KfopsError(
                f"run {run_id} did not finish within {timeout_s:.0f} s: {self.link('runs', 'details', run_id)}"
            ) from err
        return str(run.state or "UNKNOWN").upper()
