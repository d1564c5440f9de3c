"""The outermost layer of the app: Host check, request-body limit and security headers.

The Host check is Starlette's `TrustedHostMiddleware` (its refusal is re-worded as this API's
JSON error). The body limit is plain ASGI, so that an oversize body is refused while it streams in
(before the multipart parser spools it anywhere), whether or not the client sent a Content-Length;
Starlette has no such middleware.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.middleware.trustedhost import TrustedHostMiddleware

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]

# The page loads nothing from elsewhere; previews of dropped files are blob: URLs.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
]


HOST_REFUSED = "this server answers only to its own host name (localhost)"
_ADMITTED = "searchengine.host_admitted"  # set in the scope once the Host check let it through


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware. `allowed_hosts` None accepts any Host header."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, allowed_hosts: tuple[str, ...] | None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.host_check = None if allowed_hosts is None else TrustedHostMiddleware(
            self._admitted, allowed_hosts=list(allowed_hosts), www_redirect=False)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.host_check is None:
            await self._limited(scope, receive, send)
            return

        async def send_or_refuse(message: Message) -> None:
            if scope.get(_ADMITTED):
                await send(message)
            elif message["type"] == "http.response.start":  # Starlette's plain-text refusal
                await _send_json(send, message["status"], HOST_REFUSED)

        await self.host_check(scope, receive, send_or_refuse)

    async def _admitted(self, scope: Message, receive: Receive, send: Send) -> None:
        scope[_ADMITTED] = True
        await self._limited(scope, receive, send)

    async def _limited(self, scope: Message, receive: Receive, send: Send) -> None:
        """The app, with the body limit and the security headers."""
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _send_json(send, 413, self._too_large_message())
            return
        state = {"received": 0, "refused": False, "answered": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    state["refused"] = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["refused"]:  # replace whatever the app says about the broken body
                if not state["answered"]:
                    state["answered"] = True
                    await _send_json(send, 413, self._too_large_message())
                return
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not state["answered"]:
                state["answered"] = True
                await _send_json(send, 413, self._too_large_message())

    def _too_large_message(self) -> str:
        return f"request body is over the limit of {self.max_body_bytes} bytes"


async def _send_json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *SECURITY_HEADERS,
        ],
    })
    await send({"type": "http.response.body", "body": body})
