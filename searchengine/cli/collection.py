"""Commands over a collection: index, search, similar, add-texts, lookup, classify, match,
status, check, remove, use-model, models."""

from __future__ import annotations

from pathlib import Path

import click

from searchengine.cli.fast_search import prepare_fast_search
from searchengine.cli.filters import build_filter, empty_line, filter_options
from searchengine.cli.folder_search import in_folder_option
from searchengine.cli.options import (
    ImageArgument,
    catalog_option,
    echo_json,
    echo_line,
    echo_table,
    field_default,
    handle_errors,
    home_option,
    image_argument,
    json_option,
    k_option,
    model_option,
    show_progress,
)
from searchengine.settings import DECODE_PRIORITIES, IngestSettings


def _engine(home: Path, catalog: str | None, *, create: bool = False, encoder_settings=None):
    """The engine on `home` (its catalog at the URL `catalog`, else its own file); only commands
    that build a home (index, add-texts) `create` it, a read or a change of a missing home says
    there is none."""
    from searchengine.engine import Engine
    from searchengine.settings import EncoderSettings

    return Engine.open(home, create=create, catalog_url=catalog,
                       encoder_settings=encoder_settings or EncoderSettings())


def _print_result(result, as_json: bool, min_score: float | None = None) -> None:
    if as_json:
        echo_json(result.as_dict())
        return
    echo_line(f"{result.query}  [{result.model}]")
    matched = getattr(result, "matched", None)
    if not result.hits:
        click.echo(empty_line(matched, min_score))
        return
    if matched is not None:
        click.echo(f"{matched} photo{'s' if matched != 1 else ''} pass the filters")
    column = "text" if result.hits[0].text is not None else "path"
    rows = [[h.rank, h.score, h.id, h.text if h.text is not None else h.path] for h in result.hits]
    echo_table(["rank", "score", "id", column], rows)


offset_option = click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Skip this many hits.",
)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@home_option
@catalog_option
@model_option
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=field_default(IngestSettings, "batch_size"),
    show_default=True,
    help="Images per model call.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decode processes beside the model [default: min(2, CPUs)].",
)
@click.option(
    "--decode-priority",
    type=click.Choice(DECODE_PRIORITIES),
    default=field_default(IngestSettings, "decode_priority"),
    show_default=True,
    help="idle: decode workers use only CPU time the model leaves (Linux); normal: they share.",
)
@click.option(
    "--no-draft", is_flag=True, help="Decode JPEGs at full size (exact reference pixels)."
)
@click.option(
    "--index-kind",
    default=None,
    metavar="KIND",
    help="auto (a new home's default: exact flat up to 25k vectors, IVF above), flat, hnsw, "
    "ivf, ivf-sq8 or ivf-pq (compressed). Kept by later runs.",
)
@click.option(
    "--target-recall",
    type=float,
    default=None,
    metavar="R",
    help="Recall@10 an approximate index must reach against exact search; its search "
    "parameters are tuned until it does [default: 0.95; kept by later runs].",
)
@click.option(
    "--index-memory",
    default=None,
    metavar="SIZE",
    help="Memory the index may take, e.g. 2GB or 512MB; auto picks the kind and code size "
    "to fit [default: no bound; kept by later runs].",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Decode and embed on Ray (pip install 'searchengine[ray]'): ADDRESS is auto (this "
    "node's cluster), ray://HOST:10001 or HOST:PORT; alone (after PATHS), a local Ray instance "
    "for the run. This process plans and writes, as without --ray.",
)
@click.option(
    "--num-gpus",
    type=click.FloatRange(min=0),
    default=None,
    help="With --ray: GPUs per embed actor [default: 1 where the cluster has GPUs, else 0].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="With --ray: embed actors, each loading the model once [default: one per GPU, else 1].",
)
@click.option(
    "--ray-ship-bytes",
    is_flag=True,
    help="With --ray: this process reads the files and ships their bytes to the workers "
    "(small collections, workers without the photos mounted); without it every node reads "
    "PATHS itself, at the same paths (shared storage).",
)
@json_option
@handle_errors
def index(
    paths,
    home,
    catalog,
    model,
    batch_size,
    workers,
    decode_priority,
    no_draft,
    index_kind,
    target_recall,
    index_memory,
    ray_address,
    num_gpus,
    concurrency,
    ray_ship_bytes,
    as_json,
):
    """Embed every photo under PATHS, incrementally (unchanged files are not redone).

    With --ray, Ray Data decodes (CPU tasks) and embeds (an actor pool, a GPU per actor where
    there are GPUs) while this process plans and commits batch by batch, as without it.

    Example:

        searchengine index ~/Pictures --model ViT-B-32/laion2b_s34b_b79k

        searchengine index /mnt/photos --ray auto --batch-size 256
    """
    from searchengine.settings import passive_openmp_waits

    passive_openmp_waits()  # before torch loads: decode workers and the model share the cores
    chosen = {"workers": workers} if workers is not None else {}
    settings = IngestSettings(
        batch_size=batch_size, draft=not no_draft, decode_priority=decode_priority, **chosen
    )
    ray = _ray_settings(ray_address, num_gpus, concurrency, ray_ship_bytes)
    with _engine(home, catalog, create=True) as engine:
        report = engine.index(
            list(paths),
            model=model,
            settings=settings,
            index_kind=index_kind,
            target_recall=target_recall,
            index_memory=index_memory,
            ray=ray,
            progress=show_progress(as_json),
        )
        prepare_fast_search(engine, model)
    payload = {**report.__dict__, "images_per_second": round(report.images_per_second, 2)}
    if as_json:
        echo_json(payload)
        return
    click.echo(
        f"{report.scanned} files: {report.embedded} embedded, {report.reused} reused, "
        f"{report.unchanged} unchanged, {report.skipped} skipped, {report.removed} removed "
        f"in {report.seconds:.1f} s ({report.images_per_second:.1f} images/s)"
    )
    if report.refreshed:
        click.echo(f"{report.refreshed} unchanged files had their capture metadata (date, "
                   "camera, place) read again, without being embedded again")
    if report.skipped:
        click.echo("see `searchengine status` for the skipped files and why")


def _ray_settings(address, num_gpus, concurrency, ship_bytes):
    """RaySettings for `index --ray`, or None without --ray (where the Ray options are refused)."""
    from searchengine.settings import RaySettings

    if address is None:
        given = [name for name, value in (("--num-gpus", num_gpus), ("--concurrency", concurrency),
                                          ("--ray-ship-bytes", ship_bytes or None))
                 if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply with --ray")
        return None
    return RaySettings(
        address=None if address == "local" else address,
        num_gpus=num_gpus,
        concurrency=concurrency,
        ship_bytes=ship_bytes,
    )


@click.command()
@click.argument("query")
@home_option
@catalog_option
@model_option
@k_option
@offset_option
@json_option
@click.option("--like", "like", multiple=True, type=ImageArgument(), metavar="IMAGE",
              help="An image (file or id:N) the photos should look like: a term of weight +1 "
              "added to the query (repeatable; QUERY may then be \"\").")
@click.option("--unlike", "unlike", multiple=True, type=ImageArgument(), metavar="IMAGE",
              help="An image (file or id:N) the photos should not look like: a term of weight "
              "-1 (repeatable).")
@click.option("--no-serve", is_flag=True,
              help="Search here even when a `searchengine serve` runs on the home (it answers "
              "otherwise, in a fraction of the time: no model to load).")
@filter_options
@handle_errors
@in_folder_option
def search(query, home, catalog, model, k, offset, as_json, like, unlike, no_serve, after,
           before, camera, folder, near, formats, min_score, sort):
    """Find the photos that best match a sentence (text -> image).

    QUERY may add and subtract phrases: "beach +sunset -people" searches for the normalised
    sum beach + sunset - people; a weight goes between the sign and the phrase with a colon
    ("beach +2:sunset -0.5:people"). A + or - counts only after a space: "a t-shirt" and
    "+1 phone" are searched as typed.

    When `searchengine serve` runs on the home, it answers (stderr says so).

    Example:

        searchengine search "a dog on the beach" -k 10

        searchengine search "beach +sunset -people" --unlike id:42

        searchengine search "cake" --after 2023-01-01 --camera pixel --sort date

        searchengine search "a dog" --in ~/Pictures/trip
    """
    from searchengine.cli.via_serve import search_through_serve

    filters = build_filter(after, before, camera, folder, near, formats)
    refine = {"filters": filters, "min_score": min_score, "sort": sort}
    if not no_serve and search_through_serve(home, query, model=model, k=k, offset=offset,
                                             as_json=as_json, like=like, unlike=unlike,
                                             **refine):
        return
    from searchengine.settings import EncoderSettings

    with _engine(home, catalog, encoder_settings=EncoderSettings(onnx_text=True)) as engine:
        result = engine.search(query, k=k, model=model, offset=offset, like=list(like),
                               unlike=list(unlike), **refine)
        _print_result(result, as_json, min_score)
        prepare_fast_search(engine, model)


@click.command()
@image_argument
@home_option
@catalog_option
@model_option
@k_option
@offset_option
@json_option
@click.option("--no-serve", is_flag=True,
              help="Search here even when a `searchengine serve` runs on the home (it answers "
              "id:N queries otherwise).")
@filter_options
@handle_errors
def similar(image, home, catalog, model, k, offset, as_json, no_serve, after, before, camera,
            folder, near, formats, min_score, sort):
    """Find photos like IMAGE, a file or id:N for catalog id N (image -> image).

    A bare number is a file name, never an id: write `id:42` for the image with id 42.
    When `searchengine serve` runs on the home, it answers id:N (stderr says so).

    Example:

        searchengine similar ~/Pictures/x.jpg -k 10

        searchengine similar id:42 -k 10

        searchengine similar x.jpg --folder ~/Pictures/2024 --format jpeg,heic
    """
    from searchengine.cli.via_serve import similar_through_serve

    filters = build_filter(after, before, camera, folder, near, formats)
    refine = {"filters": filters, "min_score": min_score, "sort": sort}
    if (not no_serve and isinstance(image, int)
            and similar_through_serve(home, image, model=model, k=k, offset=offset,
                                      as_json=as_json, **refine)):
        return
    with _engine(home, catalog) as engine:
        result = engine.similar(image, k=k, model=model, offset=offset, **refine)
        _print_result(result, as_json, min_score)


@click.command("add-texts")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--column", default="caption", show_default=True, help="Column holding the texts.")
@click.option(
    "--set", "text_set", default="default", show_default=True, help="Name of the text set."
)
@home_option
@catalog_option
@model_option
@json_option
@handle_errors
def add_texts(source, column, text_set, home, catalog, model, as_json):
    """Add texts (a CSV/TSV/Parquet column or .txt lines) to a set, and embed them.

    Example:

        searchengine add-texts captions.csv --column caption --set captions
    """
    with _engine(home, catalog, create=True) as engine:
        report = engine.add_texts(
            source, column=column, text_set=text_set, model=model, progress=show_progress(as_json)
        )
    if as_json:
        echo_json(report.__dict__)
    else:
        click.echo(
            f"set {report.text_set!r}: {report.read} read, {report.added} new, "
            f"{report.embedded} embedded with {report.model}"
        )


@click.command()
@image_argument
@click.option("--set", "text_set", default=None, help="Only texts of this set [default: all].")
@home_option
@catalog_option
@model_option
@click.option(
    "-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Number of hits."
)
@offset_option
@json_option
@handle_errors
def lookup(image, text_set, home, catalog, model, k, offset, as_json):
    """Which texts describe IMAGE best (image -> text), over the indexed text sets.

    IMAGE is a file, or id:N for the catalogued image with id N.

    Example:

        searchengine lookup ~/Pictures/x.jpg -k 5 --set captions
    """
    with _engine(home, catalog) as engine:
        _print_result(
            engine.lookup(image, k=k, text_set=text_set, model=model, offset=offset), as_json
        )


@click.command()
@image_argument
@click.option("--labels", required=True, help="Comma-separated labels, e.g. 'dog,cat,car'.")
@click.option(
    "--templates",
    type=click.Choice(["single", "ensemble"]),
    default="ensemble",
    show_default=True,
    help="One prompt template, or an averaged ensemble.",
)
@home_option
@catalog_option
@model_option
@json_option
@handle_errors
def classify(image, labels, templates, home, catalog, model, as_json):
    """Zero-shot: which of the given labels fits IMAGE (prompt ensemble).

    IMAGE is a file, or id:N for the catalogued image with id N.

    Example:

        searchengine classify ~/Pictures/x.jpg --labels "dog,cat,car"
    """
    with _engine(home, catalog) as engine:
        result = engine.classify(image, labels.split(","), templates=templates, model=model)
    if as_json:
        echo_json(result.as_dict())
    else:
        echo_table(["label", "probability"], [[s.label, s.probability] for s in result.labels])


@click.command()
@image_argument
@click.argument("text")
@home_option
@catalog_option
@model_option
@json_option
@handle_errors
def match(image, text, home, catalog, model, as_json):
    """Image-text consistency: the cosine between IMAGE and TEXT (low = mismatch).

    IMAGE is a file, or id:N for the catalogued image with id N.

    Example:

        searchengine match ~/Pictures/x.jpg "a red car"
    """
    with _engine(home, catalog) as engine:
        score = engine.match(image, text, model=model)
        model_id = engine.model_id_of(model)
    if as_json:
        shown = f"id:{image}" if isinstance(image, int) else image  # as the user wrote it
        echo_json({"image": shown, "text": text, "model": model_id, "score": round(score, 6)})
    else:
        click.echo(f"{score:.4f}")


def _space_row(space) -> list:
    from searchengine.index.kinds import format_size

    kind = f"{space.kind} (auto)" if space.chosen_by_auto else space.kind
    return [
        space.model,
        space.modality,
        space.vectors,
        kind,
        "-" if space.recall is None else f"{space.recall:.3f}",
        " ".join(f"{k}={v}" for k, v in space.params.items()) or "-",
        "-" if space.memory_bytes is None else format_size(space.memory_bytes),
        "-" if space.build_seconds is None else f"{space.build_seconds:.1f} s",
    ]


@click.command()
@home_option
@catalog_option
@json_option
@handle_errors
def status(home, catalog, as_json):
    """Counts, models, index kinds, text sets, and skipped files with the reason.

    Example:

        searchengine status --json
    """
    with _engine(home, catalog) as engine:
        report = engine.status()
    if as_json:
        echo_json(report.as_dict())
        return
    echo_line(f"home {report.home}: {report.images} images; default model {report.default_model}")
    if report.spaces:
        echo_table(
            ["model", "modality", "vectors", "kind", "recall@10", "params", "memory", "built in"],
            [_space_row(s) for s in report.spaces],
        )
    for name, count in report.text_sets.items():
        click.echo(f"text set {name!r}: {count} texts")
    if report.skipped:
        click.echo(f"{len(report.skipped)} skipped files:")
        for path, reason in report.skipped:
            echo_line(f"  {path}: {reason}")
    for line in report.warnings:
        echo_line(f"warning: {line}")


@click.command()
@home_option
@catalog_option
@click.option("--repair", is_flag=True, help="Rebuild every index that disagrees with the catalog.")
@json_option
@handle_errors
def check(home, catalog, repair, as_json):
    """Check that the catalog and the vector indexes agree, or say where not.

    Exits 1 when they disagree (after --repair: when repair failed).

    Example:

        searchengine check --repair
    """
    with _engine(home, catalog) as engine:
        report = engine.check(repair=repair, progress=show_progress(as_json))
    if as_json:
        echo_json(
            {
                "ok": report.ok,
                "repaired": report.repaired,
                "rebuilt": report.rebuilt,
                "spaces": [
                    {**s.__dict__, "ok": s.ok, "summary": s.summary} for s in report.spaces
                ],
            }
        )
    else:
        for s in report.spaces:
            click.echo(
                f"{s.model} {s.modality} ({s.kind}): catalog {s.catalog_count}, "
                f"index {s.index_count}: {s.summary}"
            )
        for name in report.rebuilt:
            click.echo(f"rebuilt {name} from the catalog")
        if not report.spaces:
            click.echo("nothing indexed yet")
    if not report.ok:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@home_option
@catalog_option
@json_option
@handle_errors
def remove(paths, home, catalog, as_json):
    """Forget files or folders (their catalog rows and vectors); files on disk are untouched.

    Example:

        searchengine remove ~/Pictures/old
    """
    with _engine(home, catalog) as engine:
        removed = engine.remove(list(paths))
    if as_json:
        echo_json({"removed": removed})
    else:
        click.echo(f"forgot {removed} files")


@click.command("use-model")
@click.argument("spec")
@home_option
@catalog_option
@click.option("--force", is_flag=True, help="Switch even if the model has not indexed every image.")
@handle_errors
def use_model(spec, home, catalog, force):
    """Make SPEC the home's default model (once it has indexed every image).

    Example:

        searchengine use-model ViT-B-32/runs/products/best.pt
    """
    with _engine(home, catalog) as engine:
        click.echo(f"default model: {engine.use_model(spec, force=force)}")


@click.command()
@click.option("--pretrained", is_flag=True, help="List ARCH/TAG pairs with published weights.")
@json_option
@handle_errors
def models(pretrained, as_json):
    """List the model architectures (and pretrained tags) that --model accepts.

    Example:

        searchengine models --pretrained
    """
    from searchengine.models import available_models

    names = available_models(pretrained=pretrained)
    if as_json:
        echo_json({"models": names})
    else:
        click.echo("\n".join(names))


COMMANDS: list[click.Command] = [
    index,
    search,
    similar,
    add_texts,
    lookup,
    classify,
    match,
    status,
    check,
    remove,
    use_model,
    models,
]
