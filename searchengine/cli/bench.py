"""`searchengine bench`: recall@k over captioned images, zero-shot accuracy over class folders."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import click

from searchengine.cli.options import (
    echo_json,
    echo_table,
    handle_errors,
    json_option,
    show_progress,
)


def _parse_ks(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(part) for part in value.split(",") if part.strip()}))
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers such as 1,5,10, got {value!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise click.BadParameter("k values must be positive integers, e.g. 1,5,10")
    return ks


def _bench_home_option(function):
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Home to index the data set into and keep (a second run reuses its vectors) "
        "[default: a scratch home, removed afterwards].",
    )(function)


def _bench_model_option(function):
    return click.option(
        "--model", "model", required=True, metavar="SPEC",
        help="ARCH/PRETRAINED, ARCH/path/to/checkpoint.pt, ARCH/random or `demo`.",
    )(function)


@click.group()
def bench() -> None:
    """Measure retrieval quality: recall@k and zero-shot accuracy.

    Example:

    \b
        searchengine bench recall ../shared/data/flickr8k-1k --split test --model demo
    """


@bench.command("recall")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@_bench_model_option
@click.option("-k", "ks", default="1,5,10", show_default=True, callback=_parse_ks,
              help="Comma-separated cut-offs of recall@k.")
@click.option("--split", default=None,
              help="Keep one split (e.g. test) where the data set has splits.")
@click.option("--index-kind", default=None,
              help="Index kind to measure: flat, hnsw or ivf [default: flat, or the home's].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of recall@k against k (1 to 50), both directions.")
@_bench_home_option
@json_option
@handle_errors
def recall(dataset: Path, model: str, ks: tuple[int, ...], split: str | None,
           index_kind: str | None, plot_path: Path | None, home: Path | None,
           as_json: bool) -> None:
    """Recall@k (text->image, image->text) through the engine's index and exactly.

    DATASET is a captions CSV/TSV or Parquet (image,caption), a folder in the flickr8k-1k layout
    (images/, captions.csv, split.csv), or a COCO / Karpathy captions JSON.

    Example:

    \b
        searchengine bench recall ../shared/data/flickr8k-1k --split test --model ViT-B-32/random
        searchengine bench recall captions.csv --model demo -k 1,5,10 --index-kind hnsw --json
    """
    from searchengine.eval import benchmark
    from searchengine.eval.datasets import read_caption_dataset

    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, home)
        data = read_caption_dataset(dataset, split=split, image_folder=engine.home / "bench-images")
        settings = benchmark.RecallSettings(ks=ks, index_kind=index_kind)
        report = benchmark.measure_recall(engine, data, model=model, settings=settings,
                                          progress=show_progress(as_json))
    if plot_path is not None:
        benchmark.plot_recall(report, plot_path)
    if as_json:
        echo_json(report.as_dict() | ({"plot": str(plot_path)} if plot_path else {}))
        return
    summary = report.dataset
    click.echo(f"{report.model} on {summary['source']}"
               + (f" ({summary['split']})" if summary["split"] else "")
               + f": {summary['images']} images, {summary['captions']} captions")
    echo_table(*report.table())
    exact = report.exact
    click.echo(f"mean/median rank: text->image {exact.text_to_image_mean_rank:.1f}/"
               f"{exact.text_to_image_median_rank:g}, image->text "
               f"{exact.image_to_text_mean_rank:.1f}/{exact.image_to_text_median_rank:g}")
    _echo_left_out(summary)
    if plot_path is not None:
        click.echo(f"plot written to {plot_path}")


def _echo_left_out(summary: dict) -> None:
    notes = [f"{count} captions skipped ({reason})"
             for reason, count in summary["skipped_captions"].items()]
    for key, text in (("duplicate_captions", "repeated captions dropped"),
                      ("images_without_captions", "images without captions left out"),
                      ("unindexed_images", "unreadable images left out")):
        if summary.get(key):
            notes.append(f"{summary[key]} {text}")
    if notes:
        click.echo("note: " + "; ".join(notes))


@bench.command("zero-shot")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_bench_model_option
@click.option("--templates", "template_sets", type=click.Choice(["single", "ensemble"]),
              multiple=True, help="Prompt templates to compare [default: both, side by side].")
@_bench_home_option
@json_option
@handle_errors
def zero_shot(folder: Path, model: str, template_sets: tuple[str, ...], home: Path | None,
              as_json: bool) -> None:
    """Zero-shot top-1/top-5 accuracy over a folder with one sub-folder of images per class.

    Example:

    \b
        searchengine bench zero-shot ~/Pictures/by-animal --model demo
        searchengine bench zero-shot classes/ --model ViT-B-32/random --templates single --json
    """
    from searchengine.eval import benchmark
    from searchengine.eval.datasets import read_class_folder

    classes = read_class_folder(folder)
    with ExitStack() as stack:
        engine = benchmark.open_bench_engine(stack, home)
        report = benchmark.measure_zero_shot(
            engine, classes, model=model, template_sets=template_sets or ("single", "ensemble"),
            progress=show_progress(as_json),
        )
    if as_json:
        echo_json(report.as_dict())
        return
    click.echo(f"{report.model} on {report.source}: {report.n_images} images, "
               f"{len(report.labels)} classes")
    echo_table(*report.table())
    if report.unindexed_images:
        click.echo(f"note: {report.unindexed_images} unreadable images left out")


COMMANDS: list[click.Command] = [bench]
