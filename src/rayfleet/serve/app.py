"""The translation service: one Ray Serve deployment, ``Translator``.

Each replica is the HTTP ingress and the model at once: FastAPI validates the
request and checks API keys, and every text of every concurrent request goes
through one continuous-batching queue (serve/batcher.py): while the model runs,
texts queue up; when it is free, everything queued becomes the next batch. The
model call runs in a worker thread, so the replica keeps taking requests meanwhile.

Routes (under the service's route prefix):
  POST /translate   {"text": "..."} -> {"translation": "..."}
                    {"texts": [...]} -> {"translations": [...]}  (input order)
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
import os
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from ray import serve
from ray.serve import Application

from rayfleet import __version__
from rayfleet.config.service import ServiceSpec
from rayfleet.serve.backends.base import BackendSettings, load_backend
from rayfleet.serve.batcher import ContinuousBatcher
from rayfleet.serve.deploy import MODEL_DEPLOYMENT
from rayfleet.serve.keys import hash_key

__all__ = ["build_app", "Translator", "TranslateRequest", "hash_key", "VERSION_HEADER", "MODEL_DEPLOYMENT"]


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


def _parse(body: bytes, limit: int) -> TranslateRequest:
    if len(body) > limit:
        raise HTTPException(413, f"request body is {len(body)} bytes; the limit is {limit} bytes")
    try:
        return TranslateRequest.model_validate_json(body)
    except ValidationError as e:
        errors = [{k: v for k, v in err.items() if k in ("type", "loc", "msg")} for err in e.errors()]
        for err in errors:
            err["loc"] = ["body", *err["loc"]]
            err["msg"] = err["msg"].removeprefix("Value error, ")
        raise RequestValidationError(errors) from None


_REQUEST_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": TranslateRequest.model_json_schema()}}}}

app = FastAPI(
    title="rayfleet translator",
    description="Machine translation served by rayfleet on Ray Serve.",
    version=__version__,
)


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

    def __init__(self, spec: dict[str, Any], key_hashes: list[str]):
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
        self.version = self.spec.version or self.spec.model
        self._batcher = ContinuousBatcher(self.backend.translate, self.spec.batching.max_batch_size,
                                          self.spec.batching.batch_wait_timeout_s)
        self._started = time.time()

    @app.post("/translate", openapi_extra=_REQUEST_BODY_DOC,
              responses={413: {"description": "Too many texts, a text too long, or the body too large"},
                         401: {"description": "Missing or wrong API key (when the service has keys)"},
                         422: {"description": "Malformed JSON, wrong types or empty text"}})
    async def translate(self, request: Request) -> JSONResponse:
        """Translate ``text`` or ``texts``. The body is JSON whatever the Content-Type says."""
        _check_key(request, self._key_hashes)
        payload = _parse(await request.body(), self.spec.limits.max_body_bytes)
        limits = self.spec.limits
        texts = [payload.text] if payload.text is not None else list(payload.texts or [])
        if len(texts) > limits.max_texts:
            raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {limits.max_texts}")
        for i, t in enumerate(texts):
            if len(t) > limits.max_chars:
                where = "text" if payload.text is not None else f"texts[{i}]"
                raise HTTPException(413, f"{where} has {len(t)} characters; the limit is {limits.max_chars}")
        # Every text joins the replica's batch queue; answers come back in input order.
        results = await asyncio.gather(*(self._batcher.submit(t) for t in texts))
        body = {"translation": results[0]} if payload.text is not None else {"translations": list(results)}
        return JSONResponse(body, headers={VERSION_HEADER: self.version})

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/info")
    async def info(self, request: Request) -> JSONResponse:
        """This replica's settings and batching statistics."""
        _check_key(request, self._key_hashes)
        body = {
            "service": self.spec.name,
            "rayfleet": __version__,
            "model": self.spec.model,
            "version": self.version,
            "generation": self.spec.generation.model_dump(),
            "batching": {**self.spec.batching.model_dump(), **self._batcher.stats.as_dict()},
            "replica_pid": os.getpid(),
            "uptime_s": round(time.time() - self._started, 1),
            **self.backend.info(),
        }
        return JSONResponse(body, headers={VERSION_HEADER: self.version})

    def check_health(self) -> None:
        """Serve's health check: the replica is healthy while its backend is loaded."""
        if self.backend is None:
            raise RuntimeError("backend not loaded")


def deployment_options(spec: ServiceSpec) -> dict[str, Any]:
    """Options of the service's one deployment (``Translator``)."""
    opts: dict[str, Any] = {
        "name": MODEL_DEPLOYMENT,
        "max_ongoing_requests": spec.max_ongoing_requests,
        # Zero-downtime updates: new replicas start next to the old ones, which serve until they are ready.
        "max_surge_percent": 100,
        "ray_actor_options": {"num_cpus": spec.resources.num_cpus, "num_gpus": spec.resources.num_gpus},
    }
    if spec.replicas.autoscaling:
        opts["autoscaling_config"] = {
            "min_replicas": spec.replicas.min,
            "max_replicas": spec.replicas.max,
            "target_ongoing_requests": spec.replicas.target_ongoing_requests,
            "upscale_delay_s": spec.replicas.upscale_delay_s,
            "downscale_delay_s": spec.replicas.downscale_delay_s,
        }
    else:
        opts["num_replicas"] = spec.replicas.max
    return opts


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder (``import_path: rayfleet.serve.app:build_app``).

    args: ``{"spec": <ServiceSpec as JSON>, "key_hashes": [sha256 hex, ...]}``.
    """
    spec = ServiceSpec.model_validate(args["spec"])
    return Translator.options(**deployment_options(spec)).bind(
        spec.model_dump(mode="json"), list(args.get("key_hashes", [])))
