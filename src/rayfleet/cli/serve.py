"""``rayfleet serve``, ``services`` and ``translate``: options and printing over ``rayfleet.api``."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from rayfleet import client
from rayfleet.cli._common import FLEET_OPTION, console, err_console, print_table, quiet_ray_logs
from rayfleet.errors import ClusterNotRunning
from rayfleet.cluster.serving import DRAIN_S

__all__ = ["register"]

API_KEY_ENV = "RAYFLEET_API_KEY"


def serve(
    spec_file: Optional[Path] = typer.Argument(None, metavar="[SERVICE.yaml]",
                                               help="Service spec; without it, the default EN→FR translator."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the model: hub id or local directory."),
    name: Optional[str] = typer.Option(None, "--name", help="Override the service name."),
    route_prefix: Optional[str] = typer.Option(None, "--route-prefix", help="Override the URL prefix."),
    timeout: float = typer.Option(600, "--timeout", help="Seconds to wait for the service to be ready."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Deploy a service, or update it in place (no downtime) if it exists.

    The spec describes the built-in translator (model, batching, limits, keys) or your own
    Ray Serve application ('app: {import_path: module:attr, working_dir: .}'). The command
    returns when the service answers at its URL; when the new version can't start, it shows
    the replica's error and the previous version keeps serving.

    Example: rayfleet serve examples/translate.yaml --model ./models/opus-mt-en-fr
    Example: rayfleet serve examples/own-app/service.yaml
    """
    import rayfleet
    from rayfleet.serve.keys import load_api_keys
    from rayfleet.serve.service import load_service

    overrides = {"model": model, "name": name, "route_prefix": route_prefix}
    spec, base_dir = load_service(spec_file, overrides)
    cluster = rayfleet.connect(fleet_file)
    quiet_ray_logs()
    what = spec.app.import_path if spec.app else spec.model
    with console.status(f"Deploying {spec.name} ({what}) ...") as s:
        result = cluster.serve(spec_file, overrides=overrides, timeout_s=timeout,
                               progress=lambda st: s.update(f"Deploying {spec.name}: {st} ..."))
    url = result.url
    if spec.app is not None:
        console.print(f"Service {result.name} is up: {result.replicas} replica(s), app {result.model}")
        console.print(f"  url:       {url}", markup=False)
        return
    keys = load_api_keys(spec.auth, base_dir)
    console.print(f"Service {result.name} is up: {result.replicas} replica(s), model {result.model}")
    console.print(f"  translate: {url}/translate")
    console.print(f"  docs:      {url}/docs")
    auth = ' -H "Authorization: Bearer $RAYFLEET_API_KEY"' if keys else ""
    body = shlex.quote(json.dumps({"text": "Hello, how are you?"}))
    console.print(f"  try:       curl -X POST {url}/translate{auth} -H 'Content-Type: application/json' -d {body}",
                  markup=False)


services_app = typer.Typer(
    help="List services (name, kind, state, replicas, model or app, URL), or delete one.\n\n"
         "Example: rayfleet services; rayfleet services delete translator",
    no_args_is_help=False, rich_markup_mode=None)


@services_app.callback(invoke_without_command=True)
def services(ctx: typer.Context, fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """List services: name, kind (translator or app), state, replicas, model (or app), URL.

    Example: rayfleet services
    """
    import rayfleet

    ctx.obj = fleet_file
    if ctx.invoked_subcommand is not None:
        return
    rows = rayfleet.connect(fleet_file).services()
    if not rows:
        console.print("No services. Deploy one with: rayfleet serve examples/translate.yaml")
        return
    table = Table("name", "kind", "state", "replicas", "model / app", "URL")
    for s in rows:
        table.add_row(s.name, s.kind, s.status, str(s.replicas), s.model, s.url)
    print_table(table)


@services_app.command("delete")
def services_delete(ctx: typer.Context, name: str = typer.Argument(..., help="Service name."),
                    fleet_file: Optional[Path] = FLEET_OPTION) -> None:
    """Delete one service; the others keep serving.

    Example: rayfleet services delete translator
    """
    import rayfleet

    cluster = rayfleet.connect(fleet_file or ctx.obj)
    with console.status(f"Deleting {name} (its replicas finish the requests in flight: about {DRAIN_S} s) ..."):
        cluster.delete_service(name)
    console.print(f"Deleted service {name}.")


def translate(
    text: list[str] = typer.Argument(..., metavar="TEXT", help="Text(s) to translate."),
    url: Optional[str] = typer.Option(None, "--url", help="Service URL (default: the local cluster's, prefix /)."),
    timeout: float = typer.Option(120, "--timeout", help="Seconds to wait for the answer."),
    fleet_file: Optional[Path] = FLEET_OPTION,
) -> None:
    """Translate text with a running service. Uses $RAYFLEET_API_KEY when set.

    Example: rayfleet translate "The cat sleeps."
    """
    import rayfleet

    if url is None:
        try:
            url = rayfleet.connect(fleet_file).service_url()
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
