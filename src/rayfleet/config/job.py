"""``job.yaml``: one training (or tuning) job for an EN→FR seq2seq model.

Paths in the file (data files, a local base model) are relative to the file.
The job runs inside the cluster, so ``resolve_paths`` makes them absolute on
the client before the spec is submitted.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from rayfleet.config.base import Model

__all__ = [
    "JobSpec",
    "ModelSpec",
    "ArchitectureSpec",
    "DataSpec",
    "SyntheticSpec",
    "TrainingSpec",
    "ScalingSpec",
    "CheckpointSpec",
    "FailureSpec",
    "EvalSpec",
    "RegisterSpec",
    "SearchSpec",
    "Distribution",
    "FROM_SCRATCH",
]

FROM_SCRATCH = "from_scratch"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArchitectureSpec(Model):
    """A small MarianMT architecture, for ``base: from_scratch``."""

    d_model: Annotated[int, Field(ge=8, le=2048, description="Hidden size.")] = 128
    encoder_layers: Annotated[int, Field(ge=1, le=24, description="Encoder layers.")] = 2
    decoder_layers: Annotated[int, Field(ge=1, le=24, description="Decoder layers.")] = 2
    attention_heads: Annotated[int, Field(ge=1, le=32, description="Attention heads (divides d_model).")] = 4
    ffn_dim: Annotated[int, Field(ge=8, le=16384, description="Feed-forward size.")] = 512
    vocab_size: Annotated[int, Field(ge=50, le=64000, description=(
        "SentencePiece pieces asked for (shared EN+FR vocabulary, trained on the training file)."))] = 320
    max_positions: Annotated[int, Field(ge=16, le=4096, description="Longest sequence, in tokens.")] = 64
    dropout: Annotated[float, Field(ge=0, lt=1, description="Dropout.")] = 0.0

    @model_validator(mode="after")
    def _heads(self) -> "ArchitectureSpec":
        if self.d_model % self.attention_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of attention_heads "
                             f"({self.attention_heads})")
        return self


class ModelSpec(Model):
    """Where training starts: a model to fine-tune, or a new one."""

    base: str = Field(default=FROM_SCRATCH, description=(
        "'from_scratch', a Hugging Face hub id, a local directory (save_pretrained), "
        "or a registry ref (registry://NAME/VERSION or registry://NAME@ALIAS)."))
    architecture: ArchitectureSpec | None = Field(default=None, description=(
        "Architecture for 'from_scratch' (defaults apply when omitted)."))

    @model_validator(mode="after")
    def _arch_only_from_scratch(self) -> "ModelSpec":
        if self.architecture is not None and self.base != FROM_SCRATCH:
            raise ValueError("architecture applies only to 'base: from_scratch'; remove it or the base model")
        return self

    @property
    def from_scratch(self) -> bool:
        return self.base == FROM_SCRATCH

    @property
    def arch(self) -> ArchitectureSpec:
        return self.architecture or ArchitectureSpec()


class SyntheticSpec(Model):
    """Generate the built-in synthetic EN→FR corpus instead of reading files."""

    seed: Annotated[int, Field(ge=0, description="Corpus seed.")] = 0
    train_size: Annotated[int, Field(ge=10, le=1_000_000, description="Training pairs.")] = 5000
    validation_size: Annotated[int, Field(ge=1, le=100_000, description="Held-out pairs.")] = 500


class DataSpec(Model):
    """Parallel data: TSV (``en<TAB>fr`` per line) or JSONL (``{"en": ..., "fr": ...}``)."""

    train: str | None = Field(default=None, description="Training file (.tsv or .jsonl).")
    validation: str | None = Field(default=None, description="Validation file (.tsv or .jsonl).")
    synthetic: SyntheticSpec | None = Field(default=None, description=(
        "Use the built-in synthetic corpus instead of train/validation files."))
    max_source_length: Annotated[int, Field(ge=4, le=4096, description="Source tokens kept per sentence.")] = 64
    max_target_length: Annotated[int, Field(ge=4, le=4096, description="Target tokens kept per sentence.")] = 64
    ingest: Literal["auto", "driver", "ray_data"] = Field(default="auto", description=(
        "How the files reach the workers: 'driver' tokenizes them in the job's driver and hands every worker "
        "its part through Ray's object store (no start-up cost: small corpora); 'ray_data' reads and tokenizes "
        "them in parallel Ray Data tasks across the cluster and splits the result (large corpora); 'auto' "
        "(the default) takes 'driver' for a training file up to 4 MiB (about 70,000 pairs), else 'ray_data'."))

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if self.synthetic is not None:
            if self.train or self.validation:
                raise ValueError("give either synthetic or train/validation files, not both")
        elif not (self.train and self.validation):
            raise ValueError("give both train and validation files (or synthetic: {})")
        return self


class TrainingSpec(Model):
    """The optimisation: AdamW with linear warmup then linear decay."""

    epochs: Annotated[int | None, Field(ge=1, description="Passes over the training data.")] = None
    max_steps: Annotated[int | None, Field(ge=1, description="Optimizer steps (wins over epochs).")] = None
    batch_size: Annotated[int, Field(ge=1, le=4096, description="Sentence pairs per worker per step.")] = 32
    lr: Annotated[float, Field(gt=0, le=1, description="Peak learning rate.")] = 2e-3
    warmup_steps: Annotated[int, Field(ge=0, description="Linear warmup steps.")] = 100
    weight_decay: Annotated[float, Field(ge=0, le=1, description="AdamW weight decay.")] = 0.01
    grad_clip: Annotated[float, Field(gt=0, description="Gradient norm clip.")] = 1.0
    seed: Annotated[int, Field(ge=0, description="Seed for weights and data order.")] = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(default="no", description=(
        "Autocast on GPU ('bf16' or 'fp16'); ignored on CPU."))

    @model_validator(mode="after")
    def _length(self) -> "TrainingSpec":
        if self.epochs is None and self.max_steps is None:
            raise ValueError("give epochs or max_steps")
        return self


class ScalingSpec(Model):
    """How many training workers, and what each reserves."""

    num_workers: int | Literal["auto"] = Field(
        default=2, description="DDP workers (processes), or 'auto': as many as the cluster's free CPUs (GPUs with "
                               "use_gpu) allow when the job is submitted, at least 1, at most max_workers.")
    max_workers: Annotated[int, Field(ge=1, le=1024, description="The most workers 'num_workers: auto' picks.")] = 2

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("expected a whole number 1-1024 or 'auto'")
        if not 1 <= v <= 1024:
            raise ValueError("input should be greater than or equal to 1" if v < 1 else
                             "input should be less than or equal to 1024")
        return v
    use_gpu: bool = Field(default=False, description="One GPU per worker (nccl); else CPU (gloo).")
    cpus_per_worker: Annotated[float, Field(gt=0, le=256, description="CPUs per worker (torch threads).")] = 1


class CheckpointSpec(Model):
    """Checkpoints in the storage path; a restarted run resumes from the latest."""

    every_steps: Annotated[int, Field(ge=1, description="Save every N steps (and at the end).")] = 100
    keep: Annotated[int, Field(ge=1, le=1000, description="Checkpoints kept (the latest K).")] = 2


class FailureSpec(Model):
    """Worker failures survived (each resumes from the latest checkpoint)."""

    max_failures: Annotated[int, Field(ge=-1, description="-1 = retry forever, 0 = fail at once.")] = 2


class EvalSpec(Model):
    """Validation: BLEU and chrF (sacrebleu) and exact match, with greedy decoding."""

    every_steps: Annotated[int, Field(ge=1, description="Evaluate every N steps (and at the end).")] = 100
    max_samples: Annotated[int | None, Field(ge=1, description="Evaluate on at most N pairs.")] = None


class RegisterSpec(Model):
    """Register the trained model as a new version in the MLflow registry."""

    model_name: str = Field(description="Registered model name, e.g. en-fr.")
    alias: str | None = Field(default=None, description="Alias set on the new version when the run succeeds.")
    tracking_uri: str | None = Field(default=None, description=(
        "MLflow backend: sqlite:///path.db or postgresql://user:pw@host:port/db "
        "(default: $RAYFLEET_REGISTRY_URI, else SQLite in the storage path)."))

    @field_validator("model_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _MODEL_NAME.match(v):
            raise ValueError("use letters, digits, '.', '_' and '-', e.g. 'en-fr'")
        return v

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str | None) -> str | None:
        if v is not None and (not re.match(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$", v) or re.match(r"^v\d+$", v)):
            raise ValueError("use letters, digits, '_' and '-', starting with a letter (and not 'v<number>')")
        return v


class Distribution(Model):
    """One search dimension: exactly one of the keys."""

    choice: list[float | int] | None = Field(default=None, description="Pick one of these values.")
    uniform: tuple[float, float] | None = Field(default=None, description="Uniform in [low, high].")
    loguniform: tuple[float, float] | None = Field(default=None, description="Log-uniform in [low, high].")
    randint: tuple[int, int] | None = Field(default=None, description="Integer in [low, high).")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Distribution":
        given = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, randint")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low ({bounds[0]}) must be below high ({bounds[1]})")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be positive")
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        return self


class SearchSpec(Model):
    """``rayfleet tune``: distributions over training settings, ASHA early stopping."""

    lr: Distribution | None = Field(default=None, description="Learning rate.")
    batch_size: Distribution | None = Field(default=None, description="Per-worker batch size.")
    warmup_steps: Distribution | None = Field(default=None, description="Warmup steps.")
    metric: Literal["exact_match", "bleu", "chrf", "loss"] = Field(
        default="exact_match", description="What the search optimises.")
    grace_period: Annotated[int, Field(ge=1, description="ASHA: evaluations before a trial may be stopped.")] = 1
    max_concurrent: Annotated[int, Field(ge=1, description="Trials run at the same time.")] = 1

    @property
    def mode(self) -> str:
        return "min" if self.metric == "loss" else "max"


# 'register' is the key users write; pydantic warns that it shadows ABCMeta.register,
# a classmethod nothing calls on config models.
warnings.filterwarnings("ignore", message='Field name "register" in "JobSpec" shadows', category=UserWarning)


class JobSpec(Model):
    """A training job: model, data, optimisation, scaling, fault tolerance, registration."""

    name: str = Field(description="Job name (lowercase letters, digits, '-').")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Base model or architecture.")
    data: DataSpec = Field(description="Training and validation data.")
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec(max_steps=500),
                                   description="Optimisation settings.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers and resources.")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    failure: FailureSpec = Field(default_factory=FailureSpec, description="Failure handling.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation.")
    register: RegisterSpec | None = Field(default=None, description="Register the result (omit to skip).")
    search: SearchSpec | None = Field(default=None, description="Search space for 'rayfleet tune'.")
    storage_path: str | None = Field(default=None, description=(
        "Checkpoints, runs and the default registry (shared storage on a fleet; "
        "default $RAYFLEET_HOME/storage)."))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("use lowercase letters, digits and '-', at most 63 characters, e.g. 'en-fr-tiny'")
        return v

    def resolve_paths(self, base_dir: Path) -> "JobSpec":
        """A copy with data files, a local base model and storage_path made absolute."""

        def _abs(p: str | None) -> str | None:
            if p is None:
                return None
            path = Path(p).expanduser()
            return str(path if path.is_absolute() else (base_dir / path).resolve())

        data = self.data.model_copy(update={"train": _abs(self.data.train),
                                            "validation": _abs(self.data.validation)})
        model = self.model
        base = model.base
        if base != FROM_SCRATCH and not base.startswith("registry://") and (
                base.startswith((".", "/", "~")) or (base_dir / base).exists()):
            model = model.model_copy(update={"base": _abs(base)})
        return self.model_copy(update={"data": data, "model": model,
                                       "storage_path": _abs(self.storage_path)})

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        return cls.model_validate_json(text)
