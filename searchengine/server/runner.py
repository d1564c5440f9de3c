"""Starting the server: the binding rules and the uvicorn call."""

from __future__ import annotations

import logging

from searchengine.engine import Engine
from searchengine.errors import InvalidInputError
from searchengine.server.settings import LOOPBACK_NAMES, ServerSettings, is_loopback

log = logging.getLogger(__name__)
MIN_TOKEN_LENGTH = 16


def settings_for(host: str, *, token: str | None, model: str | None) -> ServerSettings:
    """Settings for binding to `host`: loopback answers only loopback Host names; any other
    address requires a token of at least 16 characters (checked here, before anything starts)."""
    token = token or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise InvalidInputError(
            f"the token must have at least {MIN_TOKEN_LENGTH} characters; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if is_loopback(host):
        return ServerSettings(model=model, token=token, allowed_hosts=LOOPBACK_NAMES)
    if token is None:
        raise InvalidInputError(
            f"--host {host} lets other machines connect: set a token with --token or "
            "$SEARCHENGINE_TOKEN (or bind to 127.0.0.1)")
    return ServerSettings(model=model, token=token)


def run(engine: Engine, host: str, port: int, settings: ServerSettings) -> None:
    """Load the model, open the indexes, and answer HTTP requests until interrupted."""
    import uvicorn

    from searchengine.server.app import create_app

    app = create_app(engine, settings)
    log.info("serving %s on http://%s:%d", engine.home, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
