"""``rayfleet serve``, ``services`` and ``translate``."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rayfleet import client
from rayfleet.cli._common import FLEET_OPTION, console, err_console, resolve_target
from rayfleet.cli.train import registry_storage
from rayfleet.config.loader import load_model, validate_data
from rayfleet.config.service import ServiceSpec
from rayfleet.errors import ClusterNotRunning, RayfleetError
from rayfleet.registry.refs import REGISTRY_ENV
from rayfleet.serve.deploy import delete_service, deploy, list_services
from rayfleet.serve.keys import hash_key, load_api_keys
from rayfleet.serve.models import resolve_model

__all__ = ["register"]

API_KEY_ENV = "RAYFLEET_API_KEY"


def _load_spec(path: Optional[Path], overrides: dict) -> tuple[ServiceSpec, Path | None]:
    if path is None:
        return validate_data(ServiceSpec, overrides, source="command line"), None
    return load_model(ServiceSpec, path, overrides=overrides), path.resolve().parent


def serve(
    spec_file: Optional[Path] = typer.Argument(None, metavar="[SERVICE.yaml]",
                                               help="Service spec; without it, the default EN→FR translator."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model: hub id or local directory."),
    name: Optional[str] = typer.Option(None, "--name", help="Override the service name."),
    route_prefix: Optional[str] = typer.Option(None, "--route-prefix", help="Override the URL prefix."),
    timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for the service to be ready."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Deploy a translation service, or update it in place if it exists.

    Example: rayfleet serve examples/translate.yaml --model ./models/opus-mt-en-fr
    """
    overrides = {k: v for k, v in {"model": model, "name": name, "route_prefix": route_prefix}.items() if v}
    spec, base_dir = _load_spec(spec_file, overrides)
    keys = load_api_keys(spec.auth, base_dir)
    storage = None
    if spec.model.startswith("registry://"):
        # On a fleet the default registry, and the version's files that every replica reads, are on its
        # shared storage. With $RAYFLEET_REGISTRY_URI only downloaded files go there (when it has one).
        try:
            storage = registry_storage(fleet_file)
        except RayfleetError:
            if not os.environ.get(REGISTRY_ENV):
                raise
    resolved = resolve_model(spec.model, storage=storage)
    if resolved != spec.model:
        spec = spec.model_copy(update={"model": resolved})
    target = resolve_target(fleet_file).serve
    with console.status(f"Deploying {spec.name} ({spec.model}) ...") as s:
        result = deploy(target, spec, [hash_key(k) for k in keys], timeout_s=timeout,
                        progress=lambda st: s.update(f"Deploying {spec.name}: {st} ..."),
                        api_key=keys[0] if keys else None)
    url = result.url
    console.print(f"Service {result.name} is up: {result.replicas} replica(s), model {result.model}")
    console.print(f"  translate: {url}/translate")
    console.print(f"  docs:      {url}/docs")
    auth = ' -H "Authorization: Bearer $RAYFLEET_API_KEY"' if keys else ""
    body = shlex.quote(json.dumps({"text": "Hello, how are you?"}))
    console.print(f"  try:       curl -X POST {url}/translate{auth} -H 'Content-Type: application/json' -d {body}",
                  markup=False)


services_app = typer.Typer(
    help="List services (name, state, replicas, model, URL), or delete one.\n\n"
         "Example: rayfleet services; rayfleet services delete translator",
    no_args_is_help=False, rich_markup_mode=None)


@services_app.callback(invoke_without_command=True)
def services(ctx: typer.Context, fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """List services: name, state, replicas, model, URL.

    Example: rayfleet services
    """
    ctx.obj = fleet_file
    if ctx.invoked_subcommand is not None:
        return
    target = resolve_target(fleet_file).serve
    rows = list_services(target)
    if not rows:
        console.print("No services. Deploy one with: rayfleet serve examples/translate.yaml")
        return
    table = Table("name", "state", "replicas", "model", "URL")
    for s in rows:
        table.add_row(s.name, s.status, str(s.replicas), s.model, s.url)
    console.print(table)


@services_app.command("delete")
def services_delete(ctx: typer.Context, name: str = typer.Argument(..., help="Service name."),
                    fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """Delete one service; the others keep serving.

    Example: rayfleet services delete translator
    """
    target = resolve_target(fleet_file or ctx.obj).serve
    with console.status(f"Deleting {name} ..."):
        delete_service(target, name)
    console.print(f"Deleted service {name}.")


def translate(
    text: list[str] = typer.Argument(..., help="Text(s) to translate."),
    url: Optional[str] = typer.Option(None, "--url", help="Service URL (default: the local cluster's, prefix /)."),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait for the answer."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Translate text with a running service. Uses $RAYFLEET_API_KEY when set.

    Example: rayfleet translate "The cat sleeps."
    """
    if url is None:
        try:
            url = resolve_target(fleet_file).serve.url("/")
        except ClusterNotRunning:
            url = "http://127.0.0.1:8000"
    result = client.translate_detailed(url, list(text), api_key=os.environ.get(API_KEY_ENV) or None,
                                       timeout_s=timeout)
    for line in result.translations:
        console.print(line, markup=False)
    for i in result.truncated:
        err_console.print(f"note: text {i + 1} has a sentence longer than the model can read; it was cut.",
                          markup=False)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(services_app, name="services")
    app.command()(translate)
