"""The translation service: one Ray Serve deployment, ``Translator``.

Each replica is the HTTP ingress and the model at once: FastAPI validates the
request and checks API keys, and every text of every concurrent request goes
through one continuous-batching queue (serve/batcher.py): while the model runs,
texts queue up; when it is free, everything queued becomes the next batch. The
model call runs in a worker thread, so the replica keeps taking requests meanwhile.

Routes (under the service's route prefix):
  POST /translate   {"text": "..."} -> {"translation": "..."}
                    {"texts": [...]} -> {"translations": [...]}  (input order)
                    plus "truncated": [indexes] when a sentence was longer than the model's window
  GET  /healthz     liveness
  GET  /info        model, backend, version, batching statistics
  GET  /docs        OpenAPI UI

rayfleet's clusters run Serve with HAProxy in front and direct ingress
(cluster/serving.py): HAProxy sends each request straight to a replica's own
HTTP port, and sends it again to another replica when the one it was on died
before answering (translation is idempotent; the limits are in README.md, "A
replica dies"). There is no second hop, so a
request costs one Python process instead of three (Serve's proxy, an ingress
replica and the model replica): see benchmarks/README.md.
"""

# No `from __future__ import annotations`: FastAPI must see real types through Serve's ingress.
import asyncio
import hmac
import importlib
import logging
import os
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray import serve
from ray.serve import Application

from rayfleet import __version__
from rayfleet.config.service import ServiceSpec
from rayfleet.errors import ModelError
from rayfleet.serve.backends.base import BackendSettings, load_backend
from rayfleet.serve.batcher import ContinuousBatcher
from rayfleet.serve.deploy import MODEL_DEPLOYMENT, PROBE_TEXT, replica_options
from rayfleet.serve.keys import hash_key
from rayfleet.serve.metrics import TranslatorMetrics
from rayfleet.serve.segment import Failed, TextTranslator, Translated

__all__ = ["build_app", "Translator", "TranslateRequest", "TranslateResponse", "hash_key", "VERSION_HEADER",
           "MODEL_DEPLOYMENT"]

logger = logging.getLogger("ray.serve")

VERSION_HEADER = "X-Model-Version"


class TranslateRequest(BaseModel):
    """Exactly one of ``text`` or ``texts``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = None
    texts: list[str] | None = None

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("text must not be empty")
        return v

    @field_validator("texts")
    @classmethod
    def _texts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("texts must hold at least one text")
            for i, t in enumerate(v):
                if not t.strip():
                    raise ValueError(f"texts[{i}] must not be empty")
        return v

    @model_validator(mode="after")
    def _one(self) -> "TranslateRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError('send exactly one of "text" (a string) or "texts" (a list of strings)')
        return self


# A request body must arrive within this: a slow upload holds one of the replica's request slots.
BODY_TIMEOUT_S = 30.0


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, never read whole when it is over ``limit`` bytes: a ``Content-Length``
    over it is a 413 at once, a chunked body one as soon as the bytes read cross it."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body is {int(declared)} bytes; the limit is {limit} bytes")
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPException(413, f"request body is over the limit of {limit} bytes")

    try:
        await asyncio.wait_for(read(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the request body did not arrive within {BODY_TIMEOUT_S:.0f} s") from None
    return bytes(body)


def _parse(body: bytes) -> TranslateRequest:
    try:
        return TranslateRequest.model_validate_json(body)
    except ValidationError as e:
        errors = [{k: v for k, v in err.items() if k in ("type", "loc", "msg")} for err in e.errors()]
        for err in errors:
            err["loc"] = ["body", *err["loc"]]
            err["msg"] = err["msg"].removeprefix("Value error, ")
        raise RequestValidationError(errors) from None


class TranslateResponse(BaseModel):
    """``translation`` for a ``text`` request, ``translations`` (input order) for ``texts``."""

    translation: str | None = None
    translations: list[str] | None = None
    truncated: list[int] | None = Field(
        default=None, description="Indexes of the texts in which a sentence longer than the model's window was "
                                  "cut (0 for a single text); absent when nothing was cut.")


class ErrorResponse(BaseModel):
    detail: str


class _ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    detail: list[_ValidationErrorItem]


# Exactly one of the two, and no blank text (the request model says the same, with messages).
_NON_BLANK = {"type": "string", "pattern": r"\S"}
_REQUEST_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "title": "TranslateRequest",
    "type": "object",
    "properties": {
        "text": {**_NON_BLANK, "description": "One text."},
        "texts": {"type": "array", "items": _NON_BLANK, "minItems": 1, "description": "Several texts."},
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["text"]}, {"required": ["texts"]}],
}}}}}

app = FastAPI(
    title="rayfleet translator",
    description="Machine translation served by rayfleet on Ray Serve.",
    version=__version__,
)


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A failure of ours is still JSON with a reason, never a plain-text error page."""
    logger.exception("request %s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def _load_wrapper(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _check_key(request: Request, hashes: list[str]) -> None:
    if not hashes:
        return
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(status_code=401, detail="missing API key: send 'Authorization: Bearer KEY'",
                            headers={"WWW-Authenticate": "Bearer"})
    digest = hash_key(key.strip())
    if not any(hmac.compare_digest(digest, h) for h in hashes):
        raise HTTPException(status_code=401, detail="invalid API key",
                            headers={"WWW-Authenticate": "Bearer"})


@serve.deployment
@serve.ingress(app)
class Translator:
    """HTTP (validation, limits, API keys) and the model: one backend per replica, fed by a continuous batcher."""

    def __init__(self, spec: dict[str, Any], key_hashes: list[str], backend_wrapper: str | None = None):
        """``backend_wrapper``: optional ``module:function`` applied to the loaded backend (a function
        backend -> backend), e.g. to instrument it or, in tests, to inject faults."""
        # Per replica, on the instance: Serve copies the FastAPI app into the replica,
        # so module-level state would not be what the routes see.
        self.spec = ServiceSpec.model_validate(spec)
        self._key_hashes = list(key_hashes)
        threads = max(1, int(self.spec.resources.num_cpus))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.backend = load_backend(self.spec.backend, BackendSettings(
            model=self.spec.model,
            device=self.spec.device,
            num_threads=threads,
            num_beams=self.spec.generation.num_beams,
            max_new_tokens=self.spec.generation.max_new_tokens,
            compute_type=self.spec.ctranslate2.compute_type,
            inter_threads=self.spec.ctranslate2.inter_threads,
        ))
        if backend_wrapper:
            self.backend = _load_wrapper(backend_wrapper)(self.backend)
        self.translator = TextTranslator(self.backend, language=self.spec.source_language,
                                         max_batch_size=self.spec.batching.max_batch_size)
        self._check_translates()
        self.version = self.spec.version or self.spec.model
        self._metrics = TranslatorMetrics(self.spec.name, self.version)
        self._tokens_seen = getattr(self.backend, "output_tokens", None)
        self._batcher = ContinuousBatcher(self.translator.translate, self.spec.batching.max_batch_size,
                                          self.spec.batching.batch_wait_timeout_s, on_batch=self._on_batch,
                                          key=len if self.spec.batching.order == "length" else None)
        self._started = time.time()

    def _on_batch(self, size: int, seconds: float, waiting: int) -> None:
        """The metrics of a model call (one at a time: the backend's token count grew by this call's)."""
        now = getattr(self.backend, "output_tokens", None)
        tokens = None if now is None or self._tokens_seen is None else now - self._tokens_seen
        self._tokens_seen = now
        self._metrics.batch(size, seconds, waiting, tokens)

    def _check_translates(self) -> None:
        """A model that loads but can't translate fails the replica (so the deploy) with its own error."""
        try:
            outcome = self.translator.translate([PROBE_TEXT])[0]
        except Exception as e:  # noqa: BLE001 - the tokenizer or the model, whatever it raises
            outcome = Failed(f"{type(e).__name__}: {e}")
        if isinstance(outcome, Failed):
            raise ModelError(f"Model {self.spec.model!r} loaded but can't translate {PROBE_TEXT!r}: {outcome.reason}",
                             hint="Check that it is a seq2seq translation model that works with its backend "
                                  "(try backend: transformers).")

    @app.post("/translate", openapi_extra=_REQUEST_BODY_DOC, response_model=TranslateResponse,
              response_model_exclude_none=True,
              responses={413: {"model": ErrorResponse,
                               "description": "Too many texts, a text too long, or the body too large"},
                         401: {"model": ErrorResponse,
                               "description": "Missing or wrong API key (when the service has keys)"},
                         408: {"model": ErrorResponse,
                               "description": f"The body did not arrive within {BODY_TIMEOUT_S:.0f} s"},
                         422: {"model": ValidationErrorResponse,
                               "description": "Malformed JSON, wrong types or empty text"},
                         500: {"model": ErrorResponse,
                               "description": "The model failed on a text of this request (other requests "
                                              "and texts are not affected)"}})
    async def translate(self, request: Request) -> JSONResponse:
        """Translate ``text`` or ``texts``. The body is JSON whatever the Content-Type says."""
        _check_key(request, self._key_hashes)
        payload = _parse(await _read_body(request, self.spec.limits.max_body_bytes))
        limits = self.spec.limits
        texts = [payload.text] if payload.text is not None else list(payload.texts or [])
        if len(texts) > limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {limits.max_texts}")
        for i, t in enumerate(texts):
            if len(t) > limits.max_chars:
                where = "text" if payload.text is not None else f"texts[{i}]"
                raise HTTPException(413, f"{where} has {len(t)} characters; the limit is {limits.max_chars}")
        # Every text joins the replica's batch queue; answers come back in input order.
        outcomes = await asyncio.gather(*(self._batcher.submit(t) for t in texts))
        failed = sum(isinstance(o, Failed) for o in outcomes)
        self._metrics.outcomes(len(outcomes) - failed, failed,
                               sum(1 for o in outcomes if not isinstance(o, Failed) and o.truncated))
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Failed):
                where = "text" if payload.text is not None else f"texts[{i}]"
                raise HTTPException(500, f"the model failed to translate {where}: {outcome.reason}")
        results: list[Translated] = outcomes
        body: dict[str, Any] = ({"translation": results[0].text} if payload.text is not None
                                else {"translations": [r.text for r in results]})
        truncated = [i for i, r in enumerate(results) if r.truncated]
        if truncated:
            body["truncated"] = truncated
        return JSONResponse(body, headers={VERSION_HEADER: self.version})

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info(self, request: Request) -> JSONResponse:
        """This replica's settings and batching statistics."""
        _check_key(request, self._key_hashes)
        backend = self.backend.info()
        generation = self.spec.generation.model_dump()
        if backend.get("max_new_tokens", generation["max_new_tokens"]) != generation["max_new_tokens"]:
            # capped by the model (its positions or generation config): say what is used and what was asked
            generation.update(max_new_tokens=backend["max_new_tokens"],
                              requested_max_new_tokens=generation["max_new_tokens"])
        body = {
            "service": self.spec.name,
            "rayfleet": __version__,
            "model": self.spec.model,
            "version": self.version,
            "generation": generation,
            "source_language": self.spec.source_language,
            "batching": {**self.spec.batching.model_dump(), **self._batcher.stats.as_dict()},
            "replica_pid": os.getpid(),
            "uptime_s": round(time.time() - self._started, 1),
            **backend,
        }
        return JSONResponse(body, headers={VERSION_HEADER: self.version})


def deployment_options(spec: ServiceSpec) -> dict[str, Any]:
    """Options of the service's one deployment (``Translator``)."""
    return {"name": MODEL_DEPLOYMENT, "max_ongoing_requests": spec.max_ongoing_requests, **replica_options(spec)}


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder (``import_path: rayfleet.serve.app:build_app``).

    args: ``{"spec": <ServiceSpec as JSON>, "key_hashes": [sha256 hex, ...]}``, optionally
    ``"backend_wrapper": "module:function"`` (see ``Translator``).
    """
    spec = ServiceSpec.model_validate(args["spec"])
    return Translator.options(**deployment_options(spec)).bind(
        spec.model_dump(mode="json"), list(args.get("key_hashes", [])), args.get("backend_wrapper"))
