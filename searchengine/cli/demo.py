"""CLI commands of the demo area: `demo`, `scenes` (write a scene collection), `scene-recall`."""

from __future__ import annotations

from pathlib import Path

import click

from searchengine.cli.options import (
    echo_json,
    echo_table,
    handle_errors,
    home_option,
    json_option,
    show_progress,
)


@click.command("scenes")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--count", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Number of scenes (images).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the scenes.")
@click.option("--split", type=click.Choice(["train", "heldout"]), default="heldout",
              show_default=True,
              help="train: never the held-out colour-shape pairs; heldout: always one of them.")
@click.option("--image-size", type=click.IntRange(32, 1024), default=128, show_default=True,
              help="Side of the square images in pixels.")
@click.option("--captions", "captions_per_scene", type=click.IntRange(min=1), default=5,
              show_default=True, help="Captions per image.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Rendering processes.")
@click.option("--free-colour", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Train split: the fraction of scenes drawn in random unnamed colours (far "
                   "from every named colour) and captioned without colour words.")
@click.option("--generic-nouns", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="The chance that a caption of a group scene says \"shapes\" for the shape "
                   "(\"two red shapes on the left\").")
@json_option
@handle_errors
def scenes_command(folder: Path, as_json: bool, **options) -> None:
    """Write a collection of generated scenes: images/, captions.csv and scenes.csv.

    Photo-like pictures of coloured shapes with captions, reproducible from the seed; the demo
    model is trained on the train split and measured on the heldout split.

    Example:

    \b
        searchengine scenes runs/scenes-heldout -n 1000 --split heldout --seed 0
        searchengine bench recall runs/scenes-heldout --model demo
    """
    from searchengine.demo.scenes import write_collection

    written = write_collection(folder, options.pop("n"), progress=show_progress(as_json),
                               **options)
    if as_json:
        echo_json({"folder": str(written)})
        return
    click.echo(f"wrote {written}/images, captions.csv and scenes.csv")


@click.command("scene-recall")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", default="demo", show_default=True, metavar="SPEC",
              help="Model to measure: `demo`, ARCH/path/to/checkpoint.pt, ...")
@json_option
@handle_errors
def scene_recall_command(folder: Path, model: str, as_json: bool) -> None:
    """Measure recall@k on a scene collection, overall and per attribute value.

    Shows where the model is weak: colour and shape are easy, counting and spatial relations
    hard, as for CLIP models in general.

    Example:

    \b
        searchengine scenes runs/scenes-heldout -n 1000 --split heldout
        searchengine scene-recall runs/scenes-heldout --model demo
    """
    from searchengine.demo.run import evaluate_scenes

    report = evaluate_scenes(model, folder, progress=show_progress(as_json))
    if as_json:
        echo_json(report.as_dict())
        return
    overall = report.overall
    rows = [["all", "", report.images]
            + [overall.text_to_image[k] for k in (1, 5, 10)]
            + [overall.image_to_text[k] for k in (1, 5, 10)]]
    rows += [[row.attribute, row.value, row.images]
             + [row.text_to_image[k] for k in (1, 5, 10)]
             + [row.image_to_text[k] for k in (1, 5, 10)] for row in report.breakdown]
    echo_table(["attribute", "value", "images", "t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1",
                "i2t R@5", "i2t R@10"], rows)


@click.command("demo")
@home_option
@click.option("--model", default="demo", show_default=True, metavar="SPEC",
              help="Model to run the demo with (the bundled scene model by default).")
@click.option("-n", "--count", "n", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Number of held-out scenes to generate and index.")
@json_option
@handle_errors
def demo_command(home: Path, model: str, n: int, as_json: bool) -> None:
    """Show the whole engine working offline on generated scenes, with the bundled model.

    Generates held-out scenes into HOME/demo (images/, captions.csv), indexes them, adds their
    captions as a text set, runs example queries of each kind and measures recall@k. The bundled
    model knows only this world of coloured shapes; for photos use a pretrained model.

    Example:

    \b
        searchengine demo --home indexes
        searchengine bench recall indexes/demo --model demo --home indexes
    """
    from searchengine.demo.run import run_demo

    report = run_demo(home, model=model, n=n, progress=show_progress(as_json))
    if as_json:
        echo_json({"folder": str(report.folder), "model": report.model,
                   "queries": [{"kind": q.kind, "query": q.query, "hits": q.hits,
                                **({"described": q.described} if q.described else {})}
                               for q in report.queries],
                   "recall": report.recall.as_dict()})
        return
    click.echo(f"indexed {report.folder / 'images'} with model {report.model}: "
               f"{report.indexed.embedded} embedded, {report.indexed.unchanged} unchanged")
    for query in report.queries:
        click.echo(f"\n{query.kind}: {query.query}")
        for i, (label, score) in enumerate(query.hits):
            about = f"  {query.described[i]}" if i < len(query.described) else ""
            click.echo(f"  {score:7.4f}  {label}{about}")
    click.echo(f"\nrecall on {report.recall.dataset['images']} held-out scenes "
               f"({report.recall.dataset['captions']} captions):")
    echo_table(*report.recall.table())
    click.echo(
        f"\nreproduce: searchengine bench recall {report.folder} --model {model} --home {home}\n"
        f"by attribute: searchengine scene-recall {report.folder} --model {model}\n"
        f"try next: searchengine search \"three purple hexagons\" --model {model} "
        f"--home {home}\n"
        f"          searchengine similar {report.folder / 'images' / 'scene-00001.jpg'} "
        f"--model {model} --home {home}\n"
        f"          searchengine serve --home {home}"
    )


COMMANDS: list[click.Command] = [demo_command, scenes_command, scene_recall_command]
