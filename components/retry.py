"""The one retry policy for the suite's calls to MLflow and S3: at most ``MAX_ATTEMPTS`` attempts within
``BUDGET_S`` seconds, with exponential backoff, each retry logged and counted.

The libraries already retry; this module configures them rather than wrapping calls in a loop of its own:

- MLflow's REST client (a urllib3 ``Retry`` on its requests session) through MLflow's own variables
  ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER``
  and ``MLFLOW_HTTP_REQUEST_TIMEOUT``. It retries refused connections and 408/429/5xx answers (the server's
  database restarting gives 500s). Its session builds the ``Retry`` by that name, which ``configure`` points at
  ``CountingRetry`` so each retry is logged, counted and held to the time budget;
- the minio client ``storage`` uses (snapshots, data, payload logs) gets a ``CountingRetry`` directly;
- boto3, which MLflow uses to write and read run artifacts on an ``s3://`` root, through ``AWS_MAX_ATTEMPTS`` and
  ``AWS_RETRY_MODE=standard``. botocore's backoff is its own (random, at most 1, 2, 4, 8 s: 15 s over 5 attempts)
  and cannot be lengthened by configuration, so an S3 outage longer than that fails the artifact write with
  botocore's error, which names the endpoint URL. Its retries are counted from botocore's own retry log line.

With the defaults the waits between the 5 attempts are 0, 6, 12 and 24 s (plus up to 0.5 s of jitter each): 42 s,
so an outage of up to about 40 s (a server's pod restarting, a 20 s network cut) is ridden out and the 60 s budget
holds. Variables a user has set win over these defaults.

MLflow and boto3 get the policy in every process that calls ``configure`` (every stage does, through
``tracking.set_tracking``). ``storage``'s S3 calls get it inside a pipeline step: any KFP task's process (KFP
runs every lightweight Python step, on a cluster and in ``kfp.local``, as ``python -m kfp.dsl.executor_main``),
and any call made under ``pipeline_step`` (a decorator for stage entry points called in-process, as the CLI and
tests do). Elsewhere they keep short retries (3 attempts within half a second): the predictor's payload log drops
and counts a batch it cannot write rather than wait a minute for S3, and a CLI command fails within a second.
``KFOPS_RETRY_MAX_ATTEMPTS`` (1 to 5) lowers the attempts; 1 means no retry.

``counts()`` gives the retries of this process by endpoint, and every process that retried logs a one-line total
when it exits (``kfops retry: 3 retries in this process (http://minio:9000: 3)``), so a pipeline step's log shows
each retry and the step's count; training logs its count as the ``client_retries`` metric of its MLflow run.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import logging
import os
import sys
import threading
import time
from collections import Counter

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BACKOFF_FACTOR_S = 3  # MLflow reads its variable as a whole number
BACKOFF_JITTER_S = 0.5
BUDGET_S = 60.0
REQUEST_TIMEOUT_S = 30  # one MLflow request; its responses are small (artifacts go to S3 directly)
LOG_PREFIX = "kfops retry"  # every retry's log line starts with it (kfops run counts them in a run's log)

ATTEMPTS_VARIABLE = "KFOPS_RETRY_MAX_ATTEMPTS"


_in_pipeline_step: contextvars.ContextVar[bool] = contextvars.ContextVar("kfops_pipeline_step", default=False)


def pipeline_step(func):
    """Decorate a stage's entry point: while it runs (in this thread or task), storage's S3 calls retry with the
    full policy, and MLflow and boto3 are configured for it."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        configure()
        token = _in_pipeline_step.set(True)
        try:
            return func(*args, **kwargs)
        finally:
            _in_pipeline_step.reset(token)

    return wrapper


@functools.cache
def _kfp_task_process() -> bool:
    """Whether this process is a KFP task: KFP starts every lightweight Python component (all of the suite's) as
    ``python3 -m kfp.dsl.executor_main`` (kfp/dsl/component_factory.py), on a cluster and in ``kfp.local``."""
    first = sys.argv[0].replace("\\", "/") if sys.argv else ""
    # `python -m` puts the module's path first; pipelines/task_server.py's forked tasks put the module's name
    return first.endswith("kfp/dsl/executor_main.py") or first == "kfp.dsl.executor_main"


def in_pipeline_step() -> bool:
    return _in_pipeline_step.get() or _kfp_task_process()


def max_attempts() -> int:
    """``MAX_ATTEMPTS``, or fewer when ``KFOPS_RETRY_MAX_ATTEMPTS`` asks for fewer."""
    from kfops.components.contracts import KfopsError

    raw = os.environ.get(ATTEMPTS_VARIABLE, "").strip()
    if not raw:
        return MAX_ATTEMPTS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ATTEMPTS:
        raise KfopsError(f"{ATTEMPTS_VARIABLE}={raw!r}: expected a whole number from 1 to {MAX_ATTEMPTS}")
    return int(raw)


def environment() -> dict[str, str]:
    """MLflow's and botocore's own settings for the policy (set unless the environment already has them)."""
    attempts = max_attempts()
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(attempts - 1),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(BACKOFF_FACTOR_S),
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(BACKOFF_JITTER_S),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
        "AWS_MAX_ATTEMPTS": str(attempts),
        "AWS_RETRY_MODE": "standard",
    }


_lock = threading.Lock()
_counts: Counter[str] = Counter()
_installed = False
_mlflow_patched = False


def counts() -> dict[str, int]:
    """Retries this process made, by endpoint."""
    with _lock:
        return dict(_counts)


def total() -> int:
    with _lock:
        return sum(_counts.values())


def count_retry(endpoint: str, attempt: int | None, what: str, cause: str, wait_s: float | None) -> None:
    """Count one retry and log it: the endpoint, the attempt that comes next, why, and the wait before it."""
    with _lock:
        first = not _counts
        _counts[endpoint] += 1
    if first:
        atexit.register(_report_at_exit)  # the process's count, as its last log line
    most = max_attempts()
    which = f"attempt {attempt} of {most}" if attempt else f"a retry (at most {most} attempts)"
    after = f"; next in {wait_s:.1f} s" if wait_s is not None else ""
    log.warning("%s: %s to %s (%s) after %s%s", LOG_PREFIX, which, endpoint, what, cause, after)


def _report_at_exit() -> None:
    found = counts()
    if found:
        detail = ", ".join(f"{endpoint}: {n}" for endpoint, n in sorted(found.items()))
        log.warning("%s: %d retr%s in this process (%s)", LOG_PREFIX, total(), "y" if total() == 1 else "ies", detail)


def _counting_retry_class():
    from urllib3.exceptions import MaxRetryError
    from urllib3.util import Retry

    class CountingRetry(Retry):
        """urllib3's Retry that logs and counts each retry and gives up once the next attempt would start after
        ``BUDGET_S`` seconds from the first failure."""

        def __init__(self, *args, first_failure: float | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.first_failure = first_failure

        def new(self, **kwargs):
            retry = super().new(**kwargs)
            retry.first_failure = self.first_failure
            return retry

        def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
            first = self.first_failure if self.first_failure is not None else time.monotonic()
            retry = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when exhausted
            retry.first_failure = first
            endpoint = f"{_pool.scheme}://{_pool.host}:{_pool.port}" if _pool is not None else "?"
            wait = retry.get_backoff_time()
            if response is not None and response.headers.get("Retry-After"):
                wait = max(wait, retry.get_retry_after(response) or 0.0)
            if time.monotonic() - first + wait > BUDGET_S:
                raise MaxRetryError(_pool, url, error or Exception(f"gave up after {BUDGET_S:.0f} s of retries"))
            cause = f"{type(error).__name__}: {error}" if error is not None else f"HTTP {response.status}"
            count_retry(endpoint, len(retry.history) + 1, f"{method} {url}", cause, wait)
            return retry

    return CountingRetry


_CountingRetry = None


def counting_retry(total: int | None = None, **kwargs):
    """The policy as a urllib3 Retry, for clients the suite builds itself (storage's minio client). Outside a
    pipeline step (see the module doc): 3 attempts, 0 and 0.4 s apart, still logged and counted."""
    global _CountingRetry
    if _CountingRetry is None:
        _CountingRetry = _counting_retry_class()
    if not in_pipeline_step():
        kwargs.setdefault("backoff_factor", 0.2)
        return _CountingRetry(total=2 if total is None else total, **kwargs)
    kwargs.setdefault("backoff_factor", BACKOFF_FACTOR_S)
    kwargs.setdefault("backoff_jitter", BACKOFF_JITTER_S)
    return _CountingRetry(total=max_attempts() - 1 if total is None else total, **kwargs)


class _BotocoreRetries(logging.Handler):
    """Counts botocore's retries from its own log line ("Retry needed, retrying request after delay of: 1.3")."""

    def emit(self, record: logging.LogRecord) -> None:
        if not str(record.msg).startswith("Retry needed, retrying"):
            return
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "s3 (boto3)"
        wait = float(record.args[0]) if record.args else None
        count_retry(endpoint, None, "boto3", "a failed S3 request", wait)


def configure() -> None:
    """Apply the policy to this process: MLflow's and boto3's settings (unless already set), the counting Retry
    in MLflow's REST session, and the botocore retry counter. Cheap to call again; stages call it through
    ``tracking.set_tracking`` and ``pipeline_step``, and promotion and rollback (the CLI's too) call it.

    MLflow's session is patched only once MLflow is imported: a step that touches S3 alone does not pay MLflow's
    import (a second or more) for it, and the callers that use MLflow (set_tracking, promote, rollback) have
    imported it before they call this."""
    global _installed, _mlflow_patched
    for name, value in environment().items():
        os.environ.setdefault(name, value)
    if _installed and (_mlflow_patched or "mlflow" not in sys.modules):
        return
    with _lock:
        install_botocore, _installed = not _installed, True
        patch_mlflow = not _mlflow_patched and "mlflow" in sys.modules
        _mlflow_patched = _mlflow_patched or patch_mlflow
    if patch_mlflow:
        try:
            from mlflow.utils import request_utils
        except ImportError:  # serving images without MLflow's REST client still get the S3 policy
            request_utils = None
        if request_utils is not None and getattr(request_utils, "Retry", None) is not None:
            request_utils.Retry = counting_retry().__class__
            # sessions built before this (and cached per process) used the plain Retry
            request_utils._cached_get_request_session.cache_clear()
    if install_botocore:
        botocore_log = logging.getLogger("botocore.retries.standard")
        botocore_log.setLevel(logging.DEBUG)
        botocore_log.propagate = False  # its other debug lines stay out of the step's log
        botocore_log.addHandler(_BotocoreRetries())
