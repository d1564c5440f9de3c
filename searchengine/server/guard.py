"""The outermost layer of the app: Host check, request-body limit and security headers.

Written as plain ASGI so that an oversize body is refused while it streams in (before the
multipart parser spools it anywhere), whether or not the client sent a Content-Length.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

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


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI middleware. `allowed_hosts` None accepts any Host header."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, allowed_hosts: tuple[str, ...] | None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if not self._host_allowed(headers.get(b"host", b"").decode("latin-1")):
            await _send_json(send, 400, "this server answers only to its own host name (localhost)")
            return
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

    def _host_allowed(self, host: str) -> bool:
        if self.allowed_hosts is None:
            return True
        # drop the port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:8000" -> "[::1]"
        name = host.split("]")[0] + "]" if host.startswith("[") else host.split(":")[0]
        return name.lower() in self.allowed_hosts

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
