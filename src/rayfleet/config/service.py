"""``service.yaml``: one service deployed with Ray Serve: the built-in translator, or your own
Serve application (``app: {import_path: ...}``)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pysbd.languages import LANGUAGE_CODES

from rayfleet.config.base import Model
from rayfleet.serve.backends.base import BackendName, ComputeType, Device

__all__ = [
    "ServiceSpec",
    "GenerationSpec",
    "BatchingSpec",
    "ReplicasSpec",
    "ResourcesSpec",
    "LimitsSpec",
    "AuthSpec",
    "CTranslate2Spec",
    "AppSpec",
    "DEFAULT_MODEL",
    "SENTENCE_LANGUAGES",
]

DEFAULT_MODEL = "Helsinki-NLP/opus-mt-en-fr"
# Source languages whose sentences the service can split: pysbd's (ISO 639-1).
SENTENCE_LANGUAGES = tuple(sorted(LANGUAGE_CODES))
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class GenerationSpec(Model):
    """How text is generated."""

    num_beams: Annotated[int, Field(ge=1, le=16, description="Beam width; 1 = greedy (fastest).")] = 1
    max_new_tokens: Annotated[int, Field(ge=1, le=1024, description="Most tokens generated per text.")] = 256


class BatchingSpec(Model):
    """Serve dynamic batching: concurrent texts are merged into one model call."""

    max_batch_size: Annotated[int, Field(ge=1, le=512, description="Most texts in one model call.")] = 32
    batch_wait_timeout_s: Annotated[float, Field(
        ge=0, le=10, description="When the model is idle, how long the first text waits for others to join it "
                                 "(under load, whatever queued during the last model call is the next batch).")] = 0.01
    order: Literal["length", "arrival"] = Field(
        default="length", description="Which queued texts make the next batch when more wait than it takes. length: "
                                      "the oldest and those nearest to it in length (a model call lasts as long as "
                                      "its longest text); arrival: first come, first served.")


class CTranslate2Spec(Model):
    """Settings of the ``ctranslate2`` backend (also used when ``auto`` picks it)."""

    compute_type: ComputeType = Field(
        default="int8", description="Weights/compute precision; int8_float16 and float16 need a GPU.")
    inter_threads: Annotated[int, Field(
        ge=1, le=64, description="Batches CTranslate2 runs at once in a replica (a large batch is split by length).")] = 1


class ReplicasSpec(Model):
    """Replica count: fixed (``replicas: 2``) or autoscaling (min < max)."""

    min: Annotated[int, Field(ge=0, le=1000, description="Fewest replicas.")] = 1
    max: Annotated[int, Field(ge=1, le=1000, description="Most replicas.")] = 1
    target_ongoing_requests: Annotated[float, Field(
        gt=0, description="Autoscaling target: requests in flight per replica.")] = 8
    upscale_delay_s: Annotated[float, Field(
        ge=0, le=3600, description="Autoscaling: how long load must stay high before a replica is added.")] = 30
    downscale_delay_s: Annotated[float, Field(
        ge=0, le=86400, description="Autoscaling: how long load must stay low before a replica is removed.")] = 600

    @model_validator(mode="before")
    @classmethod
    def _fixed_shorthand(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"min": data, "max": data}
        return data

    @model_validator(mode="after")
    def _order(self) -> "ReplicasSpec":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max}); set min <= max")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.min != self.max


class ResourcesSpec(Model):
    """What each replica reserves on its node."""

    num_cpus: Annotated[float, Field(gt=0, le=256, description="CPUs per replica; also the model's thread count.")] = 1
    num_gpus: Annotated[float, Field(ge=0, le=16, description="GPUs per replica.")] = 0


class LimitsSpec(Model):
    """Request limits; beyond them the service answers 413."""

    max_chars: Annotated[int, Field(ge=1, description="Longest text, in characters.")] = 5000
    max_texts: Annotated[int, Field(ge=1, description="Most texts in one request.")] = 64
    max_body_bytes: Annotated[int, Field(ge=64, description="Largest request body, in bytes.")] = 1_000_000


class AuthSpec(Model):
    """API keys (``Authorization: Bearer KEY``). Off unless a source is given."""

    api_keys_env: str | None = Field(
        default=None, description="Environment variable holding comma-separated API keys.")
    api_keys_file: str | None = Field(
        default=None, description="File with one API key per line ('#' starts a comment).")

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys_env or self.api_keys_file)


_IMPORT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class AppSpec(Model):
    """Your own Ray Serve application, served instead of the built-in translator."""

    import_path: str = Field(description="module:attribute of a bound Serve application (``app = Model.bind()``) "
                                         "or of a builder function that returns one.")
    working_dir: str = Field(default=".", description="Directory with the app's code, relative to the spec file; "
                                                      "uploaded to the cluster (.gitignore/.rayignore respected).")
    requirements: str | None = Field(default=None, description="pip requirements file installed for the app's "
                                                               "replicas (relative to the spec file).")
    args: dict[str, Any] = Field(default_factory=dict, description="Arguments of the builder function (when "
                                                                   "import_path names one).")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the app's replicas.")

    @field_validator("import_path")
    @classmethod
    def _import_path(cls, v: str) -> str:
        if not _IMPORT_PATH.match(v):
            raise ValueError(f"Got {v!r}; expected module:attribute, e.g. 'app:deployment' (the attribute "
                             "'deployment' of app.py in the working_dir)")
        return v


SLOTS_PER_REPLICA = 1024   # requests in flight per replica (ServiceSpec.max_ongoing_requests)


class ServiceSpec(Model):
    """A service: the built-in translator (which model, how it is served, its limits), or your
    own Serve app (``app``; then only name, route_prefix, replicas and resources apply)."""

    name: str = Field(default="translator", description="Service (Serve application) name.")
    route_prefix: str = Field(default="/", description="URL prefix, e.g. /en-fr.")
    model: str = Field(default=DEFAULT_MODEL, description="Hugging Face hub id or local directory.")
    version: str | None = Field(default=None, description="Label shown in /info and the X-Model-Version header.")
    source_language: str = Field(
        default="en", description="Language of the input texts (ISO 639-1): texts longer than the model's window "
                                  "are split into sentences by this language's rules.")
    backend: BackendName = Field(
        default="auto",
        description="Inference library; auto = ctranslate2 when it can load the model, else transformers.")
    ctranslate2: CTranslate2Spec = Field(default_factory=CTranslate2Spec, description="ctranslate2 backend settings.")
    device: Device = Field(default="auto", description="Where the model runs.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Decoding settings.")
    batching: BatchingSpec = Field(default_factory=BatchingSpec, description="Dynamic batching.")
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec, description="Fixed count or autoscaling.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per-replica resources.")
    limits: LimitsSpec = Field(default_factory=LimitsSpec, description="Request limits.")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="Optional API keys.")
    app: AppSpec | None = Field(default=None, description="Your own Serve application instead of the translator; "
                                                          "model, backend, generation, batching, limits and auth "
                                                          "are the translator's and don't apply to it.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use lowercase letters, digits and '-', at most 63 characters, e.g. 'en-fr'")
        return v

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"must start with '/', e.g. '/{v}'")
        if len(v) > 1 and v.endswith("/"):
            raise ValueError(f"must not end with '/', e.g. '{v.rstrip('/')}'")
        if any(c in v for c in "{}?#"):
            raise ValueError("must be a plain path without '{', '}', '?' or '#'")
        return v

    @field_validator("source_language")
    @classmethod
    def _language(cls, v: str) -> str:
        if v not in SENTENCE_LANGUAGES:
            raise ValueError(f"Got {v!r}; expected an ISO 639-1 code with a sentence splitter: "
                             f"{', '.join(SENTENCE_LANGUAGES)}")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give a hub id such as 'Helsinki-NLP/opus-mt-en-fr' or a local directory")
        return v

    @model_validator(mode="after")
    def _own_app(self) -> "ServiceSpec":
        if self.app is not None:
            translator_only = sorted({"model", "version", "source_language", "backend", "ctranslate2", "device",
                                      "generation", "batching", "limits", "auth"} & self.model_fields_set)
            if translator_only:
                raise ValueError(f"{', '.join(translator_only)}: settings of the built-in translator; a service "
                                 "with 'app:' is your own Serve app and configures these itself. Remove them, "
                                 "or remove 'app:'")
        return self

    @property
    def kind(self) -> str:
        return "app" if self.app is not None else "translator"

    @property
    def max_ongoing_requests(self) -> int:
        """Per-replica cap on requests in flight. Serve's default, 5, would cap batches; and a request holds
        its slot while its body arrives (up to the replica's 30 s body timeout), so slow clients would
        take every slot of a small cap. A slot is cheap: a coroutine and at most ``max_body_bytes``."""
        return max(2 * self.batching.max_batch_size, SLOTS_PER_REPLICA)
