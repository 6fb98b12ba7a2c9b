"""Errors inside a fake API server's request thread reach the test (tests/fake_http.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.components.fake_kube import FakeKube, isvc_path
from tests.fake_http import FakeServerError


def test_an_error_in_the_fake_kube_thread_is_answered_and_raised_in_the_test():
    fake = FakeKube().start()
    fake.put(
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "demo", "namespace": "models"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "mlflow"}, "storageUri": "s3://m/1"}}},
        }
    )

    def broken_controller(obj):
        # pytest.fail raises a BaseException, which socketserver's own handler does not catch
        pytest.fail("schema folder missing", pytrace=False)

    fake.statuses.append(broken_controller)
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(fake.url + isvc_path("models", "demo"), timeout=10)
    assert answer.value.code == 500
    assert "schema folder missing" in json.loads(answer.value.read())["message"]
    with pytest.raises(FakeServerError, match="schema folder missing"):
        fake.stop()


def test_a_clean_fake_stops_quietly():
    fake = FakeKube().start()
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(fake.url + isvc_path("models", "absent"), timeout=10)
    assert answer.value.code == 404
    fake.stop()
