"""Plots of a run folder (matplotlib, optional): loss, recall@k and temperature against step, and
the similarity matrix of a validation batch before and after training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def write_plots(out: Path) -> list[Path]:
    """Write `training.png` and `similarity.png` into `out` from its metrics.jsonl and similarity
    files; returns the files written (none, with a warning, when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'searchengine[train]'): no plots")
        return []
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    written = [_curves(plt, records, out / "training.png")]
    before, after = out / "similarity_start.json", out / "similarity_best.json"
    if before.is_file() and after.is_file():
        written.append(_heatmaps(plt, before, after, out / "similarity.png"))
    return written


def _curves(plt, records: list[dict], path: Path) -> Path:
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    figure, (loss_ax, recall_ax, temp_ax) = plt.subplots(1, 3, figsize=(15, 4))
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], linewidth=0.8)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    for direction, style in (("text_to_image", "-"), ("image_to_text", "--")):
        for k in ("R@1", "R@5", "R@10"):
            recall_ax.plot([r["step"] for r in evals], [r[direction][k] for r in evals], style,
                           marker="o", markersize=3, label=f"{direction.replace('_', ' ')} {k}")
    top = max([r[d][k] for r in evals for d in ("text_to_image", "image_to_text")
               for k in ("R@1", "R@5", "R@10")], default=1.0)
    recall_ax.set(title="validation recall", xlabel="step", ylabel="recall",
                  ylim=(0, min(1.0, max(top * 1.15, 0.05))))  # low recalls stay readable
    recall_ax.legend(fontsize=7)
    temp_ax.plot([r["step"] for r in train], [r["temperature"] for r in train])
    temp_ax.set(title="temperature exp(t)", xlabel="step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _heatmaps(plt, before: Path, after: Path, path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, source in zip(axes, (before, after), strict=True):
        data = json.loads(source.read_text())
        image = ax.imshow(data["similarity"], cmap="viridis")
        ax.set(title=f"cosine, validation batch, step {data['step']}", xlabel="caption",
               ylabel="image")
        figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
