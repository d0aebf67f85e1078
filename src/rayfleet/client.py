"""A small HTTP client for a running translation service."""

from __future__ import annotations

import httpx

from rayfleet.errors import ClientError

__all__ = ["translate"]


def translate(url: str, texts: list[str], *, api_key: str | None = None, timeout_s: float = 120) -> list[str]:
    """POST texts to ``{url}/translate``; returns translations in order."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"text": texts[0]} if len(texts) == 1 else {"texts": texts}
    endpoint = url.rstrip("/") + "/translate"
    try:
        r = httpx.post(endpoint, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        raise ClientError(f"Can't reach {endpoint}: {e}",
                          hint="Is the service up? Check with: rayfleet services") from e
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        hint = "Set RAYFLEET_API_KEY to a key of this service." if r.status_code == 401 else None
        raise ClientError(f"{endpoint} answered {r.status_code}: {detail}", hint=hint)
    data = r.json()
    return [data["translation"]] if "translation" in data else list(data["translations"])
