"""A small HTTP client for a running translation service.

It behaves as Ray Serve's HAProxy mode needs from a client: a request is written in
one piece (headers and body in one send), and a request whose connection closed
before the whole answer came back (a replica that stopped during an update, or died
before or while answering) is sent once more on a new connection. Translation is
idempotent, so that resend is safe; HAProxy itself retries only what it can: not an
answer it has begun to pass on (README, "A replica dies").
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from rayfleet.errors import ClientError

__all__ = ["translate", "translate_detailed", "TranslationResult"]

logger = logging.getLogger("rayfleet.client")

# The connection closed before the whole answer (none of it, or headers without the body of a replica
# killed while answering): safe to send an idempotent request again.
_UNANSWERED = (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError, BrokenPipeError,
               ConnectionAbortedError)


@dataclass(frozen=True)
class TranslationResult:
    translations: list[str]
    truncated: list[int]   # indexes of texts with a sentence cut at the model's window
    version: str           # the X-Model-Version that answered
    resent: int            # 1 when the request was sent again after its connection closed before the answer


def _connection(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ClientError(f"Got {url!r} for the service URL; expected http://HOST:PORT[/prefix].")
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    return cls(u.hostname, u.port, timeout=timeout_s), u.path.rstrip("/") + "/translate"


def _detail_text(detail) -> str:
    """FastAPI's validation ``detail`` (a list of {loc, msg}) as 'texts.0: text must not be empty; ...'."""
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for item in detail:
        if isinstance(item, dict) and "msg" in item:
            loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
            parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
        else:
            parts.append(str(item))
    return "; ".join(parts)


def translate_detailed(url: str, texts: list[str], *, api_key: str | None = None,
                       timeout_s: float = 120) -> TranslationResult:
    """POST texts to ``{url}/translate``; translations in input order, plus what the service said."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    body = json.dumps({"text": texts[0]} if len(texts) == 1 else {"texts": texts}).encode()
    endpoint = url.rstrip("/") + "/translate"
    for attempt in range(2):
        conn, path = _connection(url, timeout_s)
        try:
            conn.request("POST", path, body=body, headers=headers)  # bytes body: one send with the headers
            r = conn.getresponse()
            status, version, raw = r.status, r.getheader("X-Model-Version") or "", r.read()
            break
        except _UNANSWERED as e:
            if attempt == 0:
                logger.info("%s closed the connection before answering (%s); sending again", endpoint, e)
                continue
            raise ClientError(f"{endpoint} closed the connection twice without answering: {e}",
                              hint="Is the service being updated or restarted? Check with: rayfleet services") from e
        except (OSError, socket.timeout, http.client.HTTPException) as e:
            raise ClientError(f"Can't reach {endpoint}: {type(e).__name__}: {e}",
                              hint="Is the service up? Check with: rayfleet services") from e
        finally:
            conn.close()
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if status != 200:
        detail = data.get("detail", raw.decode(errors="replace")) if isinstance(data, dict) else raw.decode(
            errors="replace")
        if status == 401:
            hint = "Set RAYFLEET_API_KEY to a key of this service."
        elif status in (413, 422):
            hint = f"Fix the request; the service's limits are at {url.rstrip('/')}/info (limits)."
        else:
            hint = None
        raise ClientError(f"{endpoint} answered {status}: {_detail_text(detail)}", status=status, hint=hint)
    if not isinstance(data, dict) or not ("translation" in data or "translations" in data):
        raise ClientError(f"{endpoint} answered 200 with no translation: {raw[:200]!r}", status=status,
                          hint="Is this URL a rayfleet translation service?")
    translations = [data["translation"]] if "translation" in data else list(data["translations"])
    return TranslationResult(translations, list(data.get("truncated") or []), version, attempt)


def translate(url: str, texts: list[str], *, api_key: str | None = None, timeout_s: float = 120) -> list[str]:
    """POST texts to ``{url}/translate``; returns translations in order."""
    return translate_detailed(url, texts, api_key=api_key, timeout_s=timeout_s).translations
