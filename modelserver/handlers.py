"""The REST API of ``http_rest_api_handler.cc``: routing, status, metadata and predict.

Kept apart from the HTTP transport (``rest.py``) so the API logic sees plain
``(method, path, headers, body)`` and answers ``(status, headers, body)``. Routing uses TF
Serving's exact regexes; every failure becomes ``{"error": "<message>"}`` with the HTTP code of
its canonical status. Inference runs in the runtime thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import time
from concurrent.futures import Executor
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import unquote

from modelserver import json_numbers, json_predict
from modelserver.access import KEY_NAME_HEADER, Access, AccessDenied, model_name, model_of_path
from modelserver.core.applied import APPLIED_PATH, RUNTIMES_PATH
from modelserver.budget import CHARGED_BODY, BodyBudget, charging
from modelserver.core.inline import runs_inline
from modelserver.json_tensor import InputCodec, make_codec
from modelserver import monitoring, rollout
from modelserver.json_text import dump_string
from modelserver.manager import ModelManager, VersionState
from modelserver.core.status import Code, ServingError, invalid_argument, utf8_text
from modelserver.rollout import Rollout
from modelserver.runtimes import Signature
from modelserver.shadow import SHADOW_PATH

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
_V1 = re.compile(r"(?i)/v1/.*", re.DOTALL)
_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                      re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                     re.IGNORECASE)
_ORIGIN = re.compile(r"https?://.*", re.IGNORECASE)

JSON_HEADERS = (("Content-Type", "application/json"),)
CORS_HEADERS = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "POST, GET"),
                ("Access-Control-Allow-Headers", "Content-Type"))
NOT_FOUND_PAGE = (b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n"
                  b"</BODY></HTML>\n")


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def error_body(message: str) -> bytes:
    return ('{"error": ' + dump_string(utf8_text(message)) + "}").encode("utf-8")


class RestApi:
    """Answers one parsed HTTP request; never raises."""

    def __init__(self, manager: ModelManager, executor: Executor, enable_cors: bool = False,
                 metrics_path: str | None = None, hooks: Rollout | None = None,
                 access: Access | None = None) -> None:
        self.manager = manager
        self.hooks = hooks or Rollout()   # rollout.py: requests naming no version
        self.access = access or Access()   # API keys and per-model / per-key rate limits
        self.executor = executor
        self.extra_headers = CORS_HEADERS if enable_cors else ()
        self.answer_headers = JSON_HEADERS + self.extra_headers   # an admitted JSON answer's
        self.metrics_path = metrics_path  # Prometheus page, registered as an exact URI like TF's
        self.budget: BodyBudget | None = None  # the REST server's; JSON decoding is charged to it

    async def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes,
                     peer: str = "") -> Response:
        if path == SHADOW_PATH and method == "GET" and self.hooks.shadow is not None:
            if not _loopback(peer):   # the report holds clients' inputs
                return Response(404, (("Content-Type", "text/html"),), NOT_FOUND_PAGE)
            return Response(200, JSON_HEADERS, json.dumps(self.hooks.shadow.report()).encode())
        if path == self.metrics_path:
            if method != "GET":
                return Response(405, (("Content-Type", "text/plain"),), b"")
            return Response(200, (("Content-Type", "text/plain"),), monitoring.prometheus_page())
        if path == APPLIED_PATH and method == "GET":
            applied = {**self.manager.applied_files, **self.access.applied}
            return Response(200, JSON_HEADERS, json.dumps(applied).encode())
        if path == rollout.COUNTS_PATH and method == "GET":
            return Response(200, JSON_HEADERS, json.dumps(rollout.COUNTS.snapshot()).encode())
        if path == RUNTIMES_PATH and method == "GET":
            return Response(200, JSON_HEADERS, json.dumps({"models": self.manager.runtimes()}).encode())
        if not _V1.fullmatch(path):
            return Response(404, (("Content-Type", "text/html"),), NOT_FOUND_PAGE)
        admitted = self._admit(method, path, headers)
        if isinstance(admitted, Response):
            return admitted
        try:
            status, payload = await self._dispatch(method, path, headers, body)
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            status, payload = _error(exc, method, path)
        return Response(status, admitted, payload)

    def _admit(self, method: str, path: str, headers: Mapping[str, str],
               model: str | None = None) -> Response | tuple[tuple[str, str], ...]:
        """The access check (access.py) of a call to ``model`` (None: the one ``path`` names): the
        refusal, or the headers of the answer (with the key's name for Envoy's access log). A CORS
        preflight carries no credentials and is not checked."""
        if self.access.rules.idle:
            return self.answer_headers
        try:
            name = "" if method == "OPTIONS" else self.access.check(
                model_of_path(path) if model is None else model, headers.get, status_read=method == "GET")
        except AccessDenied as exc:
            extra: tuple[tuple[str, str], ...] = ()
            if exc.retry_after:
                extra = (("Retry-After", str(exc.retry_after)),)
            elif exc.code == Code.UNAUTHENTICATED:
                extra = (("WWW-Authenticate", "Bearer"),)
            return Response(exc.http_status, self.answer_headers + extra, error_body(exc.message))
        return self.answer_headers + ((KEY_NAME_HEADER, name),) if name else self.answer_headers

    def handle_now(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response | None:
        """:meth:`handle`'s answer computed on the spot when it needs no thread and no await (a
        predict that runs inline, see inline.py), else None. Saves the HTTP server a task and a
        chain of coroutines per request for the models that cost least."""
        match = _PREDICT.fullmatch(path) if method == "POST" and path != self.metrics_path else None
        if match is None:
            return None
        name, version, label, verb = match.groups()
        state = self._inline(name, version, label, len(body)) if verb.lower() == "predict" else None
        if state is None:
            return None
        admitted = self._admit(method, path, headers, model_name(name))
        if isinstance(admitted, Response):
            return admitted
        try:
            with _Recorded(name, "predict"):
                status, payload = 200, self._predict(name, version, label, body, state)
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            status, payload = _error(exc, method, path)
        return Response(status, admitted, payload)

    async def _dispatch(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        if method == "OPTIONS":
            if _ORIGIN.fullmatch(headers.get("origin", "")):
                return 200, b""
            raise invalid_argument("Origin header is missing in CORS preflight")
        if method == "POST":
            match = _PREDICT.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                return 200, await self._counted(name, verb.lower(), self._infer(verb.lower(), name, version, label,
                                                                                 body))
        elif method == "GET":
            match = _STATUS.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                if subresource:
                    return 200, await self._counted(name, "", self._metadata, name, version, label)
                return 200, await self._counted(name, "", self._status, name, version)
        raise invalid_argument(f"Malformed request: {method} {path}")

    @staticmethod
    async def _counted(name: str, api: str, work: Any, *args: Any) -> bytes:
        """Run ``work`` (a coroutine, or a function of ``args``) and record it in request_count/latency."""
        with _Recorded(name, api):
            return await work if asyncio.iscoroutine(work) else work(*args)

    # ---------------------------------------------------------------- model spec

    @staticmethod
    def _version(text: str | None) -> int | None:
        if text is None:
            return None
        version = int(text) if len(text.lstrip("0")) <= 19 else 2 ** 63  # int() refuses over 4,300 digits
        if version > 2 ** 63 - 1:
            raise invalid_argument(f"Failed to convert version: {text} to numeric.")
        return version

    def _lookup(self, name: str, version: str | None, label: str | None) -> VersionState:
        return self.manager.lookup(unquote(name), self._version(version),
                                   unquote(label) if label is not None else None)

    # ---------------------------------------------------------------- status and metadata

    def _status(self, name: str, version: str | None) -> bytes:
        from google.protobuf import json_format

        response = self.manager.status_proto(unquote(name), self._version(version))
        return json_format.MessageToJson(response, always_print_fields_with_no_presence=True).encode("utf-8")

    def _metadata(self, name: str, version: str | None, label: str | None) -> bytes:
        state = self._lookup(name, version, label)
        cached = state.cache.get("metadata")
        if cached is None:
            cached = self._build_metadata(unquote(name), state)
            state.cache["metadata"] = cached
        return cached

    @staticmethod
    def _build_metadata(name: str, state: VersionState) -> bytes:
        from google.protobuf import json_format
        from tensorflow_serving.apis import model_pb2

        spec = model_pb2.ModelSpec(name=name)
        spec.version.value = state.version
        options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        spec_json = json_format.MessageToJson(spec, **options)
        sigs_json = json_format.MessageToJson(state.model.signature_def_map(), **options)
        card = _model_card(state.model.path)
        extra = f', "model_card": {card}' if card else ""
        return ('{\n "model_spec": ' + spec_json + ',\n "metadata": {"signature_def": ' + sigs_json
                + extra + "}\n}").encode("utf-8")

    # ---------------------------------------------------------------- inference

    async def _infer(self, verb: str, name: str, version: str | None, label: str | None, body: bytes) -> bytes:
        if verb != "predict":
            from modelserver.examples import classify_or_regress

            return await asyncio.get_running_loop().run_in_executor(
                self.executor, copy_context().run, self._charged, classify_or_regress, self, verb, name,
                version, label, body)
        state = self._inline(name, version, label, len(body))
        if state is not None:
            return self._predict(name, version, label, body, state)
        return await asyncio.get_running_loop().run_in_executor(   # the canary key goes along
            self.executor, copy_context().run, self._charged, self._predict, name, version, label, body)

    def _charged(self, work: Callable[..., bytes], *args: Any) -> bytes:
        """``work(*args)`` in a pool thread, its JSON decoding charged to the body budget (the
        body is the last argument; one too small to be charged skips the bookkeeping)."""
        if self.budget is None or len(args[-1]) < CHARGED_BODY:
            return work(*args)
        with charging(self.budget):
            return work(*args)

    def _inline(self, name: str, version: str | None, label: str | None, body_size: int) -> VersionState | None:
        """The version to run on the event loop (inline.py), or None. A lookup error here just means
        "no": the pool path reports it, after the body's own errors, as before."""
        try:
            state = self._lookup(name, version, label)
        except ServingError:
            return None
        return state if runs_inline(state.model, body_size) else None

    def signature(self, state: VersionState, signature_name: str) -> Signature:
        signature = state.model.signatures.get(signature_name or DEFAULT_SIGNATURE)
        if signature is None:
            raise invalid_argument(f'Serving signature name: "{signature_name or DEFAULT_SIGNATURE}" '
                                   "not found in signature def")
        return signature

    def _input_codecs(self, state: VersionState, signature: Signature) -> dict[str, InputCodec]:
        per_model = state.cache.get("codecs")
        if per_model is None:
            per_model = state.cache.setdefault("codecs", {})
        codecs = per_model.get(signature.name)
        if codecs is None:
            codecs = {alias: make_codec(spec.dtype, alias) for alias, spec in signature.inputs.items()}
            per_model[signature.name] = codecs
        return codecs

    def _predict(self, name: str, version: str | None, label: str | None, body: bytes,
                 state: VersionState | None = None) -> bytes:
        doc, numeric = json_numbers.parse_predict_body(body)
        signature_name = json_predict.request_signature_name(doc)
        if state is None:
            state = self._lookup(name, version, label)
        name = unquote(name)
        with rollout.COUNTS.timed(name, state.version, self.manager.rollout_of(name) is not None):
            signature = self.signature(state, signature_name)
            fmt, inputs = json_predict.decode_predict(doc, self._input_codecs(state, signature), numeric)
            outputs = state.model.run(signature.name, inputs)
        if version is None and label is None:
            self.hooks.answered(name, "REST", state, signature.name, inputs, outputs)
        return json_predict.encode_predict_response(outputs, fmt)


class _Recorded:
    """One REST request in request_count/latency, with the status its outcome maps to."""

    __slots__ = ("name", "api", "start", "slot")

    def __init__(self, name: str, api: str) -> None:
        self.name, self.api, self.start = name, api, time.perf_counter()
        self.slot = monitoring.request_started()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        code = (Code.OK if kind is None else exc.code if isinstance(exc, ServingError)
                else Code.CANCELLED if isinstance(exc, asyncio.CancelledError) else Code.INTERNAL)
        monitoring.record_request(unquote(self.name), self.api, "REST", code, self.start, self.slot)


def _loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def _error(exc: Exception, method: str, path: str) -> tuple[int, bytes]:
    """The status and TF Serving error body of a request that raised ``exc``."""
    if isinstance(exc, ServingError):
        return exc.http_status, error_body(exc.message)
    log.exception("unexpected error handling %s %s", method, path)
    return 500, error_body(f"Internal error: {type(exc).__name__}: {exc}")


def _model_card(version_dir: str) -> str:
    """The version's ``assets.extra/model_card.json`` as JSON text, or "" when it has none.

    An addition to TF Serving's metadata (clients ignore unknown keys): it is how a model says,
    for instance, that its weights are random.
    """
    path = os.path.join(version_dir, "assets.extra", "model_card.json")
    try:
        with open(path, "rb") as handle:
            return json.dumps(json.loads(handle.read()))
    except (OSError, ValueError):
        return ""
