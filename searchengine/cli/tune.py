"""CLI commands of this area: `searchengine tune` and `searchengine remove-model`."""

from __future__ import annotations

import copy
from pathlib import Path

import click

from searchengine.cli.collection import _engine
from searchengine.cli.options import (
    catalog_option,
    echo_json,
    echo_line,
    echo_table,
    field_default,
    handle_errors,
    home_option,
    json_option,
    show_progress,
)
from searchengine.cli.train import train_command
from searchengine.training.tune import DIRECTIONS, METRICS, SWITCH_MODES, TuneSettings

# `train`'s options that `tune` takes as they are (its own --model, --json; no --out or --resume:
# the run goes into HOME/models/runs/): an option later added to `train` reaches `tune` too
NOT_FROM_TRAIN = ("model", "out", "resume", "as_json")
# the train options that are not TrainSettings fields: where the pairs come from
SOURCE_OPTIONS = ("val", "split", "val_split", "image_column", "caption_column")


# Where `tune`'s default differs from `train`'s: random crops on (`--no-augment` turns them off)
TUNE_DEFAULTS = {"augment": True}


def _train_options(command: click.Command) -> click.Command:
    """Append a copy of each of `train`'s options (but NOT_FROM_TRAIN) to `command`, with
    TUNE_DEFAULTS' defaults."""
    for param in train_command.params:
        if isinstance(param, click.Option) and param.name not in NOT_FROM_TRAIN:
            inherited = copy.copy(param)
            if inherited.name in TUNE_DEFAULTS:
                inherited.default = TUNE_DEFAULTS[inherited.name]
            command.params.append(inherited)
    return command


@_train_options
@click.command("tune")
@click.argument("pairs", type=click.Path(exists=True, path_type=Path))
@home_option
@catalog_option
@click.option("--model", "base", default=None, metavar="BASE",
              help="Train from this model [default: the home's default model].")
@click.option("--metric", type=click.Choice(METRICS), default=field_default(TuneSettings, "metric"),
              show_default=True, help="The recall the regression guard compares, both ways.")
@click.option("--min-gain", type=float, default=field_default(TuneSettings, "min_gain"),
              show_default=True,
              help="Least gain over the current model (in recall) asked for in each direction.")
@click.option("--switch", "switch", type=click.Choice(SWITCH_MODES),
              default=field_default(TuneSettings, "switch"), show_default=True,
              help="auto: switch when the guard passes; never: only report; always: switch.")
@json_option
@handle_errors
def tune_command(pairs: Path, home: Path, catalog: str | None, base: str | None, metric: str,
                 min_gain: float, switch: str, as_json: bool, **options) -> None:
    """Fine-tune the home's model on PAIRS, compare it with the current one, switch if better.

    Trains a candidate from the home's default model (or BASE) on PAIRS (what `train` reads;
    every `train` option applies), measures recall@1/5/10 both ways on the held-out pairs (--val,
    or a seeded --val-fraction of the images) for the current model and the candidate, and with
    --switch auto switches only if the candidate gains at least --min-gain on --metric in BOTH
    directions: it embeds the whole collection with the candidate, then makes it the default (a
    running `serve` follows). The old model's vectors stay until `remove-model`. The candidate's
    checkpoint is kept in HOME/models/, its training run in HOME/models/runs/.

    Example:

    \b
        searchengine tune products.csv --home ~/photos-index --lr 1e-5 --epochs 2

        searchengine tune flickr8k-1k --split train --val-split test \\
            --steps 200 --lr 5e-4 --min-gain 0.02 --json
    """
    from searchengine.training.settings import TrainSettings
    from searchengine.training.tune import tune

    sources = {name: options.pop(name) for name in SOURCE_OPTIONS}
    chosen = {name: value for name, value in options.items() if value is not None}
    progress = show_progress(as_json)
    settings = TuneSettings(metric=metric, min_gain=min_gain, switch=switch, progress=progress)
    with _engine(home, catalog) as engine:
        report = tune(engine, pairs, base=base, train=TrainSettings(**chosen), settings=settings,
                      **sources)
    if as_json:
        echo_json(report.as_dict())
        return
    _print_report(report)


def _print_report(report) -> None:
    current, candidate = report.figures["current"], report.figures["candidate"]
    rows = [[arrow, f"R@{k}", getattr(current, d)[k], getattr(candidate, d)[k],
             f"{getattr(candidate, d)[k] - getattr(current, d)[k]:+.4f}"]
            for d, arrow in zip(DIRECTIONS, ("text->image", "image->text"), strict=True)
            for k in (1, 5, 10)]
    echo_line(f"current:   {report.current}")
    echo_line(f"candidate: {report.candidate} (from {report.base}, "
              f"{report.train['steps']} steps on {report.train['train_pairs']} pairs)")
    click.echo(f"held-out pairs: {report.train['val_pairs']}\n")
    echo_table(["direction", "k", "current", "candidate", "gain"], rows)
    click.echo("")
    echo_line(report.reason)
    if report.collection is not None:
        c = report.collection
        click.echo(f"re-embedded {c['embedded']} photos ({c['reused']} reused, {c['had']} had "
                   f"one) of {c['files']}")
    shown = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.timings.items()
                      if seconds is not None)
    click.echo(f"time: {shown}")


@click.command("remove-model")
@click.argument("spec")
@home_option
@catalog_option
@click.option("--force", is_flag=True,
              help="Remove the default model too (another complete model becomes the default).")
@json_option
@handle_errors
def remove_model(spec: str, home: Path, catalog: str | None, force: bool, as_json: bool) -> None:
    """Delete a model's vectors and index files from the home (photos and texts stay).

    SPEC as `status` lists it (or any --model value). The default model is refused unless
    --force; make another the default first with `use-model`. A checkpoint `tune` kept in
    HOME/models/ goes with it.

    Example:

        searchengine remove-model se-tiny/random --home ~/photos-index
    """
    with _engine(home, catalog) as engine:
        removed = engine.remove_model(spec, force=force)
    if as_json:
        echo_json(removed.as_dict())
        return
    echo_line(f"removed {removed.model}: {removed.vectors['image']} image and "
              f"{removed.vectors['text']} text vectors, {len(removed.files)} files")
    echo_line(f"default model: {removed.default_model or 'none (the next `index` sets one)'}")


COMMANDS: list[click.Command] = [tune_command, remove_model]
