"""CLI commands of this area: `searchengine train`."""

from __future__ import annotations

from pathlib import Path

import click

from searchengine.cli.options import (
    echo_json,
    echo_table,
    field_default,
    handle_errors,
    json_option,
    show_progress,
)
from searchengine.training.settings import TrainSettings


def _default(name: str):
    return field_default(TrainSettings, name)  # TrainSettings' own default: the two cannot drift



@click.command("train")
@click.argument("pairs", type=click.Path(exists=True, path_type=Path))
@click.option("--model", default=_default("model"), show_default=True, metavar="SPEC",
              help="Starting model: ARCH/PRETRAINED, ARCH/path/to/checkpoint.pt or ARCH/random.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: checkpoints, metrics.jsonl, summary.json, plots.")
@click.option("--val", type=click.Path(exists=True, path_type=Path), default=None,
              help="Validation PAIRS (default: hold out --val-fraction of the images).")
@click.option("--val-fraction", type=float, default=_default("val_fraction"), show_default=True,
              help="Share of the images held out for validation when --val is not given.")
@click.option("--split", default=None, help="Train on this split of a dataset folder (e.g. train).")
@click.option("--val-split", default=None,
              help="Validate on this split (of --val, else of PAIRS), e.g. test.")
@click.option("--image-column", default=None, help="Image column of a CSV/TSV/Parquet PAIRS.")
@click.option("--caption-column", default=None, help="Caption column of a CSV/TSV/Parquet PAIRS.")
@click.option("--loss", type=click.Choice(["clip", "siglip"]), default=_default("loss"),
              show_default=True, help="Contrastive objective.")
@click.option("--lock", type=click.Choice(["image", "text"]), default=None,
              help="Freeze one tower (image: locked-image tuning).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimiser steps (default: --epochs passes).")
@click.option("--epochs", type=click.IntRange(min=1), default=_default("epochs"), show_default=True,
              help="Passes over the pairs when --steps is not given.")
@click.option("--batch-size", type=click.IntRange(min=1),
              default=_default("batch_size"), show_default=True,
              help="Pairs per contrastive batch.")
@click.option("--micro-batch", type=click.IntRange(min=1), default=None,
              help="Pairs held in memory at a time (gradient caching; same gradients).")
@click.option("--lr", type=float, default=_default("lr"), show_default=True,
              help="Peak learning rate.")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="Warmup steps [default: a tenth of the run, at most 500].")
@click.option("--weight-decay", type=float, default=_default("weight_decay"), show_default=True,
              help="AdamW weight decay of weight matrices.")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]),
              default=_default("precision"),
              show_default=True, help="fp16 needs a GPU.")
@click.option("--grad-checkpointing", is_flag=True, help="Trade compute for activation memory.")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Random crops (open_clip's training transform) instead of the evaluation crop "
              "(`tune` turns them on).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Image decode processes [default: min(2, CPUs)].")
@click.option("--seed", type=int, default=_default("seed"), show_default=True,
              help="Seed of everything random.")
@click.option("--device", default=_default("device"), show_default=True,
              help="auto, cpu or cuda[:n].")
@click.option("--eval-every", type=click.IntRange(min=1),
              default=_default("eval_every"), show_default=True,
              help="Steps between validation passes.")
@click.option("--save-every", type=click.IntRange(min=1),
              default=_default("save_every"), show_default=True,
              help="Steps between checkpoints (last.pt).")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many validation passes without a better recall.")
@click.option("--hard-negatives", type=click.Choice(["mined", "swapped", "both"]), default=None,
              help="mined: batches of pairs near each other under the current model; swapped: "
                   "extra false captions with an attribute word changed; both [default: off].")
@click.option("--refresh-every", type=click.IntRange(min=1), default=_default("refresh_every"),
              show_default=True, help="Mined: steps between re-embeddings of the captions.")
@click.option("--mine-group", type=click.IntRange(min=1), default=_default("mine_group"),
              show_default=True, help="Mined: an anchor and its nearest pairs, per group.")
@click.option("--swap-vocabulary", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Swapped: word groups file (`name: word, word | synonym` per line) "
                   "[default: English colours, counts, sizes, positions, shapes, objects].")
@click.option("--swaps-per-caption", type=click.IntRange(min=1),
              default=_default("swaps_per_caption"), show_default=True,
              help="Swapped: false captions made from each caption.")
@click.option("--swap-seen-only/--swap-any", "swap_seen_only", default=None,
              help="Swapped: only swaps whose neighbouring attribute words occur side by side "
                   "in a training caption (an unseen combination is unknown, not false) "
                   "[default: seen only].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt.")
@json_option
@handle_errors
def train_command(pairs: Path, out: Path, val: Path | None, split: str | None,
                  val_split: str | None, image_column: str | None, caption_column: str | None,
                  resume: bool, as_json: bool, **options) -> None:
    """Adapt a CLIP model to your own image-caption pairs, checking recall while it trains.

    PAIRS is a CSV/TSV (image path + caption columns), a Parquet file (path or image bytes +
    caption), a folder of images with same-named .txt captions, or a dataset folder with
    captions.csv, images/ and split.csv. The run folder gets best.pt (best validation recall;
    use it with --model ARCH/OUT/best.pt), last.pt, metrics.jsonl, summary.json and plots.

    Example:

    \b
        searchengine train products.csv --model ViT-B-32/laion2b_s34b_b79k --out runs/products

        searchengine train flickr8k-1k --split train --val-split test \\
            --model se-tiny/random --lr 5e-4 --steps 500 --out runs/tiny

        searchengine train scenes --model demo --hard-negatives both --out runs/hard
    """
    from searchengine.settings import passive_openmp_waits

    passive_openmp_waits()  # before torch loads: the model takes every core beside idle decoders
    from searchengine.training.loop import train

    chosen = {name: value for name, value in options.items() if value is not None}  # None: its own
    settings = TrainSettings(progress=show_progress(as_json), **chosen)
    summary = train(out, settings, pairs=pairs, val=val, resume=resume, split=split,
                    val_split=val_split, image_column=image_column,
                    caption_column=caption_column)
    if as_json:
        echo_json(summary.as_dict())
        return
    rows = []
    for label, record in (("start", summary.start), ("best", summary.best),
                          ("final", summary.final)):
        rows.append([label, record.get("step", 0)]
                    + [record[d][f"R@{k}"] for d in ("text_to_image", "image_to_text")
                       for k in (1, 5, 10)] + [record.get("diagonal_gap", 0.0)])
    echo_table(["", "step", "t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1", "i2t R@5", "i2t R@10",
                "gap"], rows)
    click.echo(f"\n{summary.message}")
    click.echo(f"{summary.steps} steps, {summary.pairs_per_second:.1f} pairs/s; "
               f"skipped: {summary.skipped}")
    click.echo(f"best checkpoint: {summary.best_checkpoint}")


COMMANDS: list[click.Command] = [train_command]
