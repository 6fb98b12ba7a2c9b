"""KServe's REST application around one TabularPredictor, and a server that binds the host it is given.

``build_app`` makes a fresh FastAPI app with KServe's own endpoints (V1, V2, health, ``/metrics``) and
exception handlers, the way ``RESTServer.create_application`` does, but on a new app object each time:
``create_application`` decorates the one module-level ``kserve.model_server.app``, so a second call (a second
test, a second model) would add a second set of routes that the first set shadows.

Additions to KServe's app: a request body that FastAPI cannot validate as a V2 inference request is a 400 (not
a 422) with the field named; a V2 body without the binary extension's header is read as JSON whatever its
content-type says, as V1's is; every 4xx/5xx answer of a model endpoint counts in ``model_request_errors_total``.

The V1 predict route of a ready TabularPredictor takes a fast path in the middleware: the body is parsed with
orjson and handed straight to the predictor's own ``preprocess`` and ``predict``, and the answer written back
as bytes. The predictor does the same work as under KServe's dataplane (the same validation, batcher, metrics
and payload log, the same response body and error bodies); what is skipped is FastAPI's routing and KServe's
generic request plumbing, which cost more than the model itself at one row a request (``kserve-plain`` against
``kfops`` in benchmarks/bench_serving.py; RESULTS.md has the latest figures). Everything else (V2, metadata, health,
readiness, a model still loading) goes through KServe's app unchanged.

``serve`` runs uvicorn on ``host``:``port`` (KServe's ModelServer always binds 0.0.0.0), access log off, and
loads the model after the socket is open, so ``/v2/models/NAME/ready`` answers 503 until the model is loaded
(liveness ``/v2/health/live`` answers at once). A model that fails to load stops the server with exit code 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re

from kfops.serving.asgi import TOO_LARGE, read_body

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# The serving process's GIL switch interval. The payload writer and the scoring thread run Python beside the event
# loop; at CPython's default 5 ms a request ready on the loop could wait that long behind them for the GIL.
SWITCH_INTERVAL_SECONDS = 0.001
_MODEL_PATH = re.compile(r"^/v[12]/models/([^/:]+)")


def _is_scoring(scope) -> bool:
    path = scope.get("path", "")
    return scope.get("method") == "POST" and (path.endswith(":predict") or path.endswith("/infer"))


class ErrorCounter:
    """Pure ASGI middleware: counts error answers of model endpoints by model and status code, and the scoring
    requests on their way to each model's batcher (``predictor.arrivals``: it waits for rows only while some are
    coming); serves
    V1 predict of a ready TabularPredictor on the fast path (see the module doc)."""

    def __init__(self, app, models, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.models = models  # the ModelRepository: only registered names become label values
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match = _MODEL_PATH.match(scope.get("path", ""))
        if match is None:
            await self.app(scope, receive, send)
            return
        from kfops.serving import metrics

        name = match.group(1)
        predictor = self.models.get_model(name)
        model = name if predictor is not None else "unknown"

        scoring = predictor is not None and hasattr(predictor, "arrivals") and _is_scoring(scope)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                if scoring:
                    metrics.count_request(model, predictor.version, status)
                if status >= 400:
                    metrics.count_error(model, status)
            await send(message)

        if not scoring:
            await self.app(scope, receive, counting_send)
            return
        with predictor.arrivals.arriving():
            # A scoring body is read here, bounded, so an oversized one is a 400 before anything parses it.
            body = await read_body(scope, receive, self.max_body_bytes)
            if body is None:
                return  # the client went away
            if body is TOO_LARGE:
                message = f"request body is larger than this server's maximum of {self.max_body_bytes:,} bytes"
                await _answer(counting_send, 400, {"error": message})
                return
            if scope["path"].endswith(":predict") and getattr(predictor, "ready", False):
                await _fast_v1(predictor, scope, body, counting_send)
            else:
                problem = _binary_v2_problem(scope, body) if scope["path"].endswith("/infer") else None
                if problem is not None:
                    await _answer(counting_send, 400, {"error": problem})
                    return
                v2_scope = _json_unless_binary(scope) if scope["path"].endswith("/infer") else scope
                await self.app(v2_scope, _replay(body, receive), counting_send)


_JSON_HEADERS = [(b"content-type", b"application/json")]


def _json_unless_binary(scope):
    """A V2 infer request without the binary tensor extension's header is JSON, whatever its content-type says
    (Triton's HTTP client sends none, ``curl -d`` a form type): FastAPI would read such a body as bytes, which
    KServe then refuses for want of that header. Its content-type becomes application/json; a body that does not
    parse is still a 400."""
    headers = scope.get("headers", [])
    for key, value in headers:
        key = key.lower()
        if key == b"inference-header-content-length":
            return scope
        if key == b"content-type" and value.split(b";", 1)[0].strip().lower() == b"application/json":
            return scope
    kept = [(k, v) for k, v in headers if k.lower() != b"content-type"]
    return {**scope, "headers": [*kept, *_JSON_HEADERS]}


def _binary_v2_problem(scope, body: bytes) -> str | None:
    """What is wrong with a V2 body in the binary tensor extension (None when nothing is, or it is JSON): KServe's
    decoder answers a malformed one with a 500 (protocol.check_v2_binary)."""
    from kfops.serving.protocol import BadBody, check_v2_binary

    for key, value in scope.get("headers", []):
        if key.lower() == b"inference-header-content-length":
            try:
                check_v2_binary(body, value.decode("latin-1"))
            except BadBody as err:
                return str(err)
            return None
    return None


def _replay(body: bytes, receive):
    """An ASGI receive that hands the already-read body to the app, then waits on the real one."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send, status: int, payload: dict, extra_headers=()) -> None:
    import orjson

    await send({"type": "http.response.start", "status": status, "headers": [*_JSON_HEADERS, *extra_headers]})
    await send({"type": "http.response.body", "body": orjson.dumps(payload)})


async def _fast_v1(predictor, scope, body: bytes, send) -> None:
    """V1 predict straight through the predictor: the same validation, batching, metrics and bodies."""
    from kserve.errors import InferenceError, InvalidInput, ModelNotReady

    from kfops.serving.protocol import BadBody, parse_json

    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    try:
        try:
            doc = parse_json(body)  # JSON whatever the content-type header says
        except BadBody as err:
            raise InvalidInput(str(err)) from None
        parsed = await predictor.preprocess(doc, headers)
        status, answer = 200, await predictor.predict(parsed, headers)
    except InvalidInput as err:
        log.info("bad request: %s", err)
        status, answer = 400, {"error": str(err)}
    except ModelNotReady as err:
        status, answer = 503, {"error": str(err)}
    except InferenceError as err:
        log.error("prediction failed: %s", err)
        status, answer = 500, {"error": str(err)}
    extra = [(b"x-request-id", headers["x-request-id"].encode("latin-1"))] if headers.get("x-request-id") else []
    await _answer(send, status, answer, extra)


def build_app(
    predictor,
    *,
    enable_docs: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    outcomes_sink: str = "",
):
    """KServe's FastAPI app serving ``predictor`` (loaded or not: readiness follows ``predictor.ready``).

    With ``outcomes_sink`` (a folder or s3:// prefix, usually the payload log's), ``POST /v1/outcomes`` records
    ground-truth outcomes by request id under ``<sink>/outcomes/`` (``kfops.components.records``), to be joined
    with the payload log for live performance and A/B analysis."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, ORJSONResponse
    from kserve.errors import InvalidInput, ModelNotReady
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    import kfops.serving.metrics  # noqa: F401  (merges the suite's collectors into /metrics)

    class FixedModelRepository(ModelRepositoryExtension):
        """The served model is the one the process started with. KServe's repository extension would let any
        caller unload it (one unauthenticated POST takes the model out of service), so load and unload are
        refused; its REST routes are removed below."""

        async def load(self, model_name: str) -> None:
            raise InvalidInput(f"loading models by API is turned off: this server serves only '{predictor.name}'")

        async def unload(self, model_name: str) -> None:
            raise InvalidInput(f"unloading models by API is turned off: this server serves only '{predictor.name}'")

    repository = ModelRepository()
    repository.update(predictor)
    dataplane = DataPlane(model_registry=repository)
    extension = FixedModelRepository(model_registry=repository)
    app = FastAPI(
        title="kfops model server",
        docs_url="/docs" if enable_docs else None,
        redoc_url=None,
        default_response_class=ORJSONResponse,
    )
    rest = RESTServer(app, dataplane, extension, http_port=0)
    # /metrics before KServe's own route (the first match wins): under --workers it sums every worker's metrics.
    app.add_route("/metrics", _metrics_route, methods=["GET"])
    # What RESTServer.create_application does, on this app (its timing middleware only writes trace logs).
    for change in ("load", "unload"):  # before KServe's own routes, which the first match shadows
        app.add_route(f"/v2/repository/models/{{model_name}}/{change}", _repository_change_refused, methods=["POST"])
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)

    async def request_validation_handler(_, exc: RequestValidationError):
        # The V2 infer body is Union[InferenceRequest, bytes]: drop the errors of the bytes branch.
        errors = [e for e in exc.errors() if "bytes" not in e.get("loc", ())] or list(exc.errors())
        problems = []
        for error in errors[:5]:
            if error.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({(error.get('ctx') or {}).get('error', 'decode error')})")
                continue
            path = [str(p) for p in error.get("loc", ()) if p not in ("body", "InferenceRequest")]
            problems.append(f"{'.'.join(path) or 'body'}: {error.get('msg', 'invalid')}")
        return JSONResponse(status_code=400, content={"error": "invalid request: " + "; ".join(problems)})

    async def invalid_input_handler(_, exc: InvalidInput):
        # KServe's handler logs a full traceback at ERROR for every bad request; one line at INFO is enough.
        log.info("bad request: %s", exc)
        return JSONResponse(status_code=400, content={"error": str(exc)})

    async def model_not_ready_handler(_, exc: ModelNotReady):
        # Readiness probes hit this every few seconds while a model loads: no traceback for each.
        log.debug("%s", exc)
        return JSONResponse(status_code=503, content={"error": str(exc)})

    if outcomes_sink:
        _add_outcomes_route(app, outcomes_sink, max_body_bytes)
    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_exception_handler(InvalidInput, invalid_input_handler)
    app.add_exception_handler(ModelNotReady, model_not_ready_handler)
    app.add_middleware(ErrorCounter, models=repository, max_body_bytes=max_body_bytes)
    app.state.predictor = predictor
    app.state.dataplane = dataplane
    app.state.model_repository_extension = extension
    return app


async def _repository_change_refused(request):
    """KServe's V2 repository load/unload routes, refused (see FixedModelRepository in ``build_app``)."""
    from fastapi.responses import JSONResponse

    name = request.path_params.get("model_name", "")
    return JSONResponse(
        status_code=403,
        content={"error": f"loading and unloading models by API is turned off ('{name}'): restart the server instead"},
    )


async def _metrics_route(request):
    from fastapi.responses import Response

    from kfops.serving.metrics import exposition

    body, content_type = exposition(request.headers.get("accept"))
    return Response(content=body, headers={"content-type": content_type})


def _add_outcomes_route(app, sink: str, max_body_bytes: int) -> None:
    from fastapi.responses import JSONResponse

    async def record(request):  # a plain Starlette endpoint: it gets the Request
        import orjson

        from kfops.components.contracts import KfopsError
        from kfops.components.records import record_outcomes

        body = await request.body()
        if len(body) > max_body_bytes:
            return JSONResponse(
                status_code=400, content={"error": f"request body is larger than {max_body_bytes:,} bytes"}
            )
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            return JSONResponse(status_code=400, content={"error": f"the body is not valid JSON ({err})"})
        try:
            # Writing to the sink blocks (a file, an S3 put): off the event loop.
            written = await asyncio.to_thread(record_outcomes, parsed, sink)
        except KfopsError as err:
            log.info("bad outcomes request: %s", err)
            return JSONResponse(status_code=400, content={"error": str(err)})
        except OSError as err:
            log.error("outcomes could not be written to %s: %s", sink, err)
            return JSONResponse(status_code=503, content={"error": f"outcomes could not be written: {err}"})
        return JSONResponse(status_code=200, content=written)

    app.add_route("/v1/outcomes", record, methods=["POST"])


def grpc_server(app, host: str, port: int):
    """KServe's V2 gRPC service (GRPCInferenceService) over the same dataplane as ``app``, bound to host:port.

    KServe's own GRPCServer always listens on [::]; this one honours ``host`` like the REST server does.
    Bad input is INVALID_ARGUMENT, a model still loading UNAVAILABLE (KServe's ExceptionToStatusInterceptor).
    """
    from grpc import aio
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer

    server = aio.server(interceptors=(ExceptionToStatusInterceptor(),))
    servicer = InferenceServicer(app.state.dataplane, app.state.model_repository_extension)
    servicer.ModelInfer = _checked_model_infer(servicer.ModelInfer)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"{host}:{port}")
    return server


def _checked_model_infer(model_infer):
    """KServe's ModelInfer with each request checked first (protocol.check_v2_grpc): a bad datatype is an
    INVALID_ARGUMENT naming the input, where KServe's decoder says only "invalid content type"."""
    from kserve.errors import InvalidInput

    from kfops.serving.protocol import BadBody, check_v2_grpc

    async def checked(request, context):
        try:
            check_v2_grpc(request)
        except BadBody as err:
            raise InvalidInput(str(err)) from None
        return await model_infer(request, context)

    return checked


async def _load_then_ready(predictor, server) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, predictor.load)
        # Everything loaded so far (torch, mlflow, the model) lives as long as the server: keep it out of the
        # collector's full passes, which otherwise stall requests for 100+ ms under load.
        gc.collect()
        gc.freeze()
    except Exception as err:
        log.error("model %s failed to load: %s", predictor.name, err)
        server.kfops_exit_code = 1
        server.should_exit = True


def serve(
    predictor,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    grpc_port: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    timeout_keep_alive: int = 65,
    outcomes_sink: str = "",
    sock=None,
) -> int:
    """Serve ``predictor`` on host:port (REST) and, with ``grpc_port``, V2 gRPC on host:grpc_port, until
    SIGTERM/SIGINT; load it in the background. Returns an exit code. ``sock``: an already listening socket to
    serve on instead of binding host:port (a ``--workers`` worker's, shared with the others)."""
    import sys

    import uvicorn

    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)

    app = build_app(predictor, max_body_bytes=max_body_bytes, outcomes_sink=outcomes_sink)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        timeout_keep_alive=timeout_keep_alive,
        lifespan="off",
    )

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured SIGTERM/SIGINT once it has shut down, which kills the process before
            # the batcher and payload logger are closed; shut down gracefully and exit normally instead.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    server = Server(config)
    server.kfops_exit_code = 0

    async def main() -> None:
        loader = None
        if sock is not None:
            # A worker accepts from the shared socket only once its model is loaded: until then the workers that
            # are ready take every connection, and none is answered 503 by one still loading.
            await _load_then_ready(predictor, server)
            if server.should_exit:
                predictor.stop()
                return

        async def start_loading():
            nonlocal loader
            while not server.started and not server.should_exit:
                await asyncio.sleep(0.01)
            if not predictor.ready:
                loader = asyncio.ensure_future(_load_then_ready(predictor, server))

        waiter = asyncio.ensure_future(start_loading())
        grpc = grpc_server(app, host, grpc_port) if grpc_port is not None else None
        if grpc is not None:
            await grpc.start()
            log.info("V2 gRPC on %s:%d", host, grpc_port)
        try:
            await server.serve(sockets=[sock] if sock is not None else None)
        finally:
            if grpc is not None:
                await grpc.stop(grace=5)
            waiter.cancel()
            if loader is not None and not loader.done():
                loader.cancel()
            predictor.stop()

    # uvicorn.run would pick uvloop (and httptools) when installed; serving our own main() must ask for the same
    # loop, since plain asyncio.run gives the pure-Python loop (about half the requests/s at batch 1).
    loop_factory = config.get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return server.kfops_exit_code
