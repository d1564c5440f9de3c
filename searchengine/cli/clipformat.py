"""Commands that move vectors in and out in clip-retrieval's format: export, import."""

from __future__ import annotations

from pathlib import Path

import click

from searchengine.cli.options import (
    catalog_option,
    echo_json,
    echo_line,
    handle_errors,
    home_option,
    json_option,
    model_option,
    show_progress,
)


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@home_option
@catalog_option
@model_option
@click.option("--texts", "text_set", default=None, metavar="SET",
              help="Export this text set (text_emb/ with `caption`) instead of the photos.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Rows a shard (img_emb_N.npy + metadata_N.parquet).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True,
              help="Vector type; float16 is what the catalog stores and clip-retrieval writes.")
@click.option("--force", is_flag=True,
              help="Replace OUT when it is not empty (once the new folder is complete).")
@json_option
@handle_errors
def export(out, home, catalog, model, text_set, shard_size, dtype, force, as_json):
    """Write the vectors as clip-retrieval does: OUT/img_emb/, OUT/metadata/.

    autofaiss, clip-retrieval and embedding-reader read the folder as it is. It is written
    beside OUT under a hidden name and renamed when complete.

    Example:

        searchengine export embeddings/ --shard-size 100000

        searchengine export caption-embeddings/ --texts captions
    """
    from searchengine.cli.collection import _engine

    with _engine(home, catalog) as engine:
        report = engine.export_embeddings(
            out, model=model, text_set=text_set, shard_size=shard_size, dtype=dtype, force=force,
            progress=show_progress(as_json),
        )
    if as_json:
        echo_json(report.__dict__)
        return
    what = "image vectors" if report.text_set is None else f"texts of {report.text_set!r}"
    echo_line(
        f"{report.rows} {what} of {report.model} ({report.dim}-d {report.dtype}) in "
        f"{report.shards} shards to {report.folder} in {report.seconds:.1f} s"
    )


@click.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@home_option
@catalog_option
@click.option("--model", "model", required=True, metavar="SPEC",
              help="The model that made the vectors (ARCH/PRETRAINED, ARCH/path/to/checkpoint.pt, "
              "ARCH/random); its dimension must match.")
@click.option("--set", "text_set", default=None,
              help="Text set for text_emb/ rows [default: the exported set, else captions].")
@click.option("--base", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder that relative image_path values start from [default: the current "
              "folder].")
@click.option("--index-kind", default=None, metavar="KIND",
              help="The image index's kind, as `index` takes it: auto (a new home's default), "
              "flat, hnsw, ivf, ivf-sq8 or ivf-pq. Kept by later runs.")
@json_option
@handle_errors
def import_(folder, home, catalog, model, text_set, base, index_kind, as_json):
    """Add the vectors of a clip-retrieval folder (img_emb/, metadata/) without the model.

    Rows whose image_path is no file here (URLs, webdataset keys) are counted, not stored.
    Importing twice adds nothing.

    Example:

        searchengine import embeddings/ --model ViT-B-32/laion2b_s34b_b79k
    """
    from searchengine.cli.collection import _engine

    with _engine(home, catalog, create=True) as engine:
        report = engine.import_embeddings(
            folder, model=model, text_set=text_set, base=base, index_kind=index_kind,
            progress=show_progress(as_json),
        )
    if as_json:
        echo_json(report.__dict__)
        return
    echo_line(
        f"{report.images} photos imported, {report.present} already there, {report.missing} "
        f"not on this machine, {report.changed} changed since, {report.unreadable} unreadable"
        + (f"; set {report.text_set!r}: {report.texts} texts imported, {report.texts_present} "
           "already there" if report.text_set is not None else "")
        + f" ({report.model}, {report.seconds:.1f} s)"
    )


COMMANDS: list[click.Command] = [export, import_]
