"""Starting the server: the binding rules, the uvicorn call and the home's serve record."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from datetime import datetime, timezone

from searchengine.engine import Engine
from searchengine.errors import InvalidInputError
from searchengine.server.settings import LOOPBACK_NAMES, ServerSettings, is_loopback
from searchengine.serving import ServeRecord, catalog_identity, remove_record, write_record

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


def listening_socket(config) -> socket.socket:
    """uvicorn's bound socket for `config` (a `uvicorn.Config`), as a socket object that knows
    it is TCP.

    uvicorn creates it with protocol 0, and the sockets `accept` makes inherit that number;
    asyncio switches Nagle's algorithm off (TCP_NODELAY) only on sockets whose protocol is
    IPPROTO_TCP. Without it, every response after the first on a kept-alive connection waited
    for the client's delayed ACK: 40 ms added to each request (a cached thumbnail took 48 ms
    instead of 2)."""
    bound = config.bind_socket()
    if bound.family not in (socket.AF_INET, socket.AF_INET6):
        return bound
    return socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())


def run(engine: Engine, host: str, port: int, settings: ServerSettings) -> None:
    """Load the model, open the indexes, and answer HTTP requests until interrupted.

    While it listens, HOME/serve.json says where (`searchengine.serving`), so that `search` on
    this home can ask it; a clean stop (Ctrl-C, SIGTERM) removes the file."""
    import uvicorn

    from searchengine.server.app import create_app

    app = create_app(engine, settings)
    service = app.state.service
    config = uvicorn.Config(app, host=host, port=port, log_level="info", server_header=False)
    server = uvicorn.Server(config)
    listening = listening_socket(config)  # before the record: port 0 becomes the port chosen
    record = _record(engine, host, listening.getsockname()[1], settings, service.instance)
    announced = _announce(engine, record)
    previous = _exit_on_sigterm()
    try:
        log.info("serving %s on %s", engine.home, record.url)
        server.run(sockets=[listening])
    finally:
        if announced:
            remove_record(engine.home, record.instance)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        service.close()


def client_url(host: str, port: int) -> str:
    """The URL a process on this machine reaches a server bound to `host` at (a wildcard bind
    is reached on loopback)."""
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0"):
        bare = "127.0.0.1"
    elif bare == "::":
        bare = "::1"
    shown = f"[{bare}]" if ":" in bare else bare
    return f"http://{shown}:{port}"


def _record(engine: Engine, host: str, port: int, settings: ServerSettings,
            instance: str) -> ServeRecord:
    return ServeRecord(
        pid=os.getpid(), url=client_url(host, port),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"), instance=instance,
        home=str(engine.home.resolve()), catalog=catalog_identity(engine.home),
        model=settings.model, token=settings.token is not None,
    )


def _announce(engine: Engine, record: ServeRecord) -> bool:
    """Write the home's serve record; a home that cannot be written is served all the same."""
    if engine.catalog.read_only:
        return False
    try:
        write_record(engine.home, record)
    except OSError as error:
        log.warning("could not write %s/serve.json (%s); `search` will not find this server",
                    engine.home, error)
        return False
    return True


def _exit_on_sigterm():
    """Make SIGTERM a SystemExit (uvicorn shuts down gracefully on it, then raises the signal
    again with the handler found before it started: this one), so `finally` blocks run.
    Returns the previous handler, None off the main thread (signals cannot be set there)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)
