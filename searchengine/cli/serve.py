"""The `serve` command: a web page and a JSON API over a home, with the model loaded once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from searchengine.cli.options import (
    catalog_option,
    handle_errors,
    home_option,
    model_option,
)


@click.command()
@home_option
@catalog_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port.")
@model_option
@click.option("--token", envvar="SEARCHENGINE_TOKEN", default=None, metavar="TOKEN",
              show_envvar=True,
              help="Secret every API request must carry (at least 16 characters); required when "
              "--host is not loopback. Prefer the environment variable (not in `ps`).")
@click.option("--watch", "watch", multiple=True, type=click.Path(path_type=Path),
              metavar="FOLDER", help="Keep FOLDER indexed while serving (repeatable): new, "
              "changed, moved and deleted photos show without a restart (docs/watch.md).")
@click.option("--rescan", type=float, default=None, metavar="SECONDS",
              help="With --watch: index the folders in full this often [default: 600].")
@click.option("--polling", is_flag=True,
              help="With --watch: poll the folders instead of using inotify (network shares).")
@handle_errors
def serve(home, catalog, host, port, model, token, watch, rescan, polling):
    """Serve a web page and a JSON API to search a home (model loaded once).

    The API is described at /openapi.json; see docs/serve.md.

    Example:

    \b
        searchengine serve --home indexes --port 8000
        searchengine serve --home indexes --watch ~/Pictures
        SEARCHENGINE_TOKEN=long-random-secret searchengine serve --host 0.0.0.0
    """
    from searchengine.engine import Engine
    from searchengine.server.runner import run, settings_for

    settings = settings_for(host, token=token, model=model)
    if watch:
        from searchengine.ingest.watch import WatchSettings, check_watch_roots

        roots = check_watch_roots(watch)  # a bad folder stops here, before the model loads
        chosen = {"rescan_seconds": rescan} if rescan is not None else {}
        watching = WatchSettings(polling=polling, **chosen).check()
        settings = dataclasses.replace(settings, watch=tuple(map(str, roots)),
                                       watch_settings=watching)
    elif rescan is not None or polling:
        raise click.UsageError("--rescan and --polling only apply with --watch")
    # with --watch, a new home is made (as `index` makes one); without, serve only reads
    with Engine.open(home, create=bool(watch), catalog_url=catalog) as engine:
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"loading {engine.model_id_of(model)} and serving {engine.home} on "
                   f"http://{shown}:{port}/ (Ctrl-C stops)", err=True)
        run(engine, host, port, settings)


COMMANDS: list[click.Command] = [serve]
