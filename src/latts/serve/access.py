"""Who may call the server and how much they may send: an ASGI middleware in front of the whole app.

With an API key, every ``/v1/...`` endpoint needs ``Authorization: Bearer <key>`` (401 otherwise, in
OpenAI's error shape, so OpenAI clients raise ``AuthenticationError``); ``/health`` and the
playground's static page stay open, since a load balancer and a person opening the page have no key
yet (the page asks for it). Request bodies over ``max_body_bytes`` get 413 before the app parses them:
the body is read here up to the limit (whether or not a Content-Length was sent) and handed on as is.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

Scope = dict[str, Any]


def error_body(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return json.dumps({"error": {"message": message, "type": kind, "param": param,
                                 "code": code if code is not None else status}}).encode()


class AccessLimits:
    """ASGI middleware: the API key on ``/v1/...`` and the request-body size limit (see the module doc).

    Args:
        app: the ASGI application behind it.
        api_key: the key clients must send as a bearer token; None or empty: no key needed.
        max_body_bytes: the largest request body accepted.
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key or None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope["path"].startswith("/v1") and not self._authorized(scope):
            await _reply(send, 401, error_body(401, "a valid API key is needed: send 'Authorization: Bearer <key>' "
                                                    "(this server was started with --api-key)",
                                               "invalid_request_error", code="invalid_api_key"),
                         extra=[(b"www-authenticate", b"Bearer")])
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reply(send, 413, self._too_large())
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        body, more, rest = bytearray(), True, None
        while more:
            message = await receive()
            if message["type"] != "http.request":
                rest = message  # the client left before sending the whole body
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await _reply(send, 413, self._too_large())
                return
        replayed = [False]

        async def replay() -> dict[str, Any]:
            if not replayed[0]:
                replayed[0] = True
                return rest if rest is not None else {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def _too_large(self) -> bytes:
        return error_body(413, f"the request body is over this server's limit of {self.max_body_bytes} bytes "
                               "(--max-body)", "invalid_request_error", code="request_too_large")


async def _reply(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
