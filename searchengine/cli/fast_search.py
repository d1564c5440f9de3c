"""Cold `search` processes without torch: the ONNX export of a model's text tower, prepared by
a command that has the model loaded anyway (`index`, or a `search` that had to load it)."""

from __future__ import annotations

import logging
import time

import click

log = logging.getLogger(__name__)


def prepare_fast_search(engine, model: str | None) -> None:
    """Export `model`'s text tower for later cold searches (`Engine.prepare_onnx_text`) when
    this process has the model loaded and no usable export is there; says so on stderr. A
    failure is a warning, never the command's error: the export is a cache."""
    from searchengine.errors import SearchEngineError

    try:
        if not engine.has_encoder(model) or not engine.onnx_text_missing(model):
            return
        click.echo("preparing faster searches of this model (once, a few seconds)...", err=True)
        started = time.perf_counter()
        made = engine.prepare_onnx_text(model, loaded_only=True)
    except (SearchEngineError, RuntimeError, OSError, ValueError, TypeError) as error:
        log.warning("could not export the text tower for faster searches: %s", error)
        return
    if made is not None:
        click.echo(f"done in {time.perf_counter() - started:.1f} s: later `search` commands "
                   "start without loading torch", err=True)
