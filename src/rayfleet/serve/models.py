"""Where a service's model comes from: a local directory or a hub id.

``resolve_model`` runs on the client before a deploy, so a wrong path or an
unreachable hub is one clear error instead of replicas failing in a loop.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from rayfleet.errors import ModelError

__all__ = ["resolve_model", "looks_like_path", "hub_offline", "files_digest", "to_storage", "for_fleet"]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set, read now and by huggingface_hub's own rule (1/ON/YES/TRUE)."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ENV_VARS_TRUE_VALUES

_HINT = ("Pass a local directory that holds a model saved with save_pretrained "
         "(config.json, tokenizer files, weights), e.g. --model /models/opus-mt-en-fr "
         "or 'model: /models/opus-mt-en-fr' in service.yaml.")


def looks_like_path(model: str) -> bool:
    return (model.startswith(("/", "./", "../", "~")) or model.count("/") > 1
            or Path(model).expanduser().exists())


def _check_dir(model: str) -> str:
    path = Path(model).expanduser().resolve()
    if not path.exists():
        raise ModelError(f"Model directory {model!r} does not exist.", hint=_HINT)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"{model!r} is not a model directory (no config.json in it).", hint=_HINT)
    return str(path)


def _hub_reachable(timeout_s: float = 3.0) -> str | None:
    """None when the hub's host accepts a TCP connection, else the reason it doesn't."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as e:
        return f"{host}: {e.strerror or e}"


def resolve_model(model: str, *, storage: str | Path | None = None) -> str:
    """Return what replicas should load: an absolute directory or a hub id.

    ``storage``: where the default registry lives (on a fleet, its shared storage.path,
    so that a replica on any node reads the version's files from the share; files the
    registry has to download go there too). None: $RAYFLEET_HOME/storage.

    Raises ModelError naming the model and how to pass a local path.
    """
    # registry://NAME/VERSION or registry://NAME@ALIAS: the version's files, from the
    # model registry (RegistryError names the model and what exists).
    if model.startswith("registry://"):
        from rayfleet.registry.store import Registry

        cache = Path(storage) / "model-cache" if storage is not None else None
        return str(Registry(storage=storage).resolve(model, cache_dir=cache))
    if looks_like_path(model):
        return _check_dir(model)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    if isinstance(cached, str):
        return model
    if hub_offline():
        raise ModelError(f"Model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set.",
                         hint=_HINT)
    reason = _hub_reachable()
    if reason is not None:
        raise ModelError(
            f"Model {model!r} is not in the local cache and the Hugging Face Hub can't be reached ({reason}).",
            hint=_HINT)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        hf_hub_download(model, "config.json", etag_timeout=5)
    except RepositoryNotFoundError as e:
        raise ModelError(f"Model {model!r} does not exist on the Hugging Face Hub.", hint=_HINT) from e
    except (HfHubHTTPError, OSError) as e:
        raise ModelError(f"Model {model!r} could not be fetched from the Hugging Face Hub: {e}",
                         hint=_HINT) from e
    return model


def files_digest(files: list[Path], root: Path, extra: bytes = b"") -> str:
    """sha256 over each file's path under ``root``, size and content, then ``extra``: what names a
    model's files by their content (the fleet's model copies, CTranslate2's conversion cache)."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    h.update(extra)
    return h.hexdigest()


def to_storage(path: str, storage: Path, *, progress: Callable[[str], None] | None = None,
               kind: str = "models") -> str:
    """A model directory (or, with ``kind="data"``, a data file) of this machine as the fleet's nodes can
    read it: itself when it is under the fleet's shared ``storage`` already, else a copy at
    ``<storage>/<kind>/<name>-<content hash>`` (a file keeps its suffix). The copy is content-addressed
    (a second deploy of the same files copies nothing), appears whole or not at all (copied beside,
    then renamed), and is readable by every user of the nodes."""
    src = Path(path)
    if src.resolve().is_relative_to(storage.resolve()):
        return path
    name = "model" if kind == "models" else src.name
    one = src.is_file()
    files = [src] if one else sorted(f for f in src.rglob("*") if f.is_file())
    digest = files_digest(files, src.parent if one else src)[:12]
    dest = storage / kind / (f"{src.stem}-{digest}{src.suffix}" if one else f"{src.name}-{digest}")
    if dest.exists():
        if progress:
            progress(f"{name} already on the fleet's storage: {dest}")
        return str(dest)
    size = sum(f.stat().st_size for f in files)
    if progress:
        progress(f"copying {'the ' if kind == 'models' else ''}{name} to the fleet's storage ({size / 2**20:.1f} MiB): {dest}")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if one:
            shutil.copyfile(src, tmp)
        else:
            shutil.copytree(src, tmp)  # symlinks (a hub cache's) become the files they point to
        # Readable by the nodes' user, who is not this machine's (the source may be a private 0700 dir).
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        try:
            tmp.rename(dest)
        except OSError:  # another deploy put the same files there meanwhile
            if not dest.exists():
                raise
    except OSError as e:
        raise ModelError(f"Can't copy {src} to the fleet's storage {storage}: {e}",
                         hint="The fleet's storage.path must be writable from this machine.") from e
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return str(dest)


def for_fleet(resolved: str, storage: Callable[[], Path | None], *,
              progress: Callable[[str], None] | None = None) -> str:
    """What the cluster's processes should load for a model ``resolve_model`` returned: a directory
    of this machine goes to the fleet's shared storage (``to_storage``; ``storage()`` None: the local
    cluster, whose processes see this machine's files); a hub id stays as it is."""
    if not Path(resolved).is_dir():
        return resolved
    from rayfleet.errors import RayfleetError

    try:
        shared = storage()
    except RayfleetError as e:
        raise ModelError(f"The model {resolved} is a directory of this machine, which the fleet's nodes can't "
                         f"read, and rayfleet can't put it on the fleet's storage: {e.message}",
                         hint=e.hint) from None
    return resolved if shared is None else to_storage(resolved, shared, progress=progress)
