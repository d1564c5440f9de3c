"""Is shape in a scene model's image tower at all, and can the tower learn it?

Two measurements on the group scenes (one kind of object) of two collections, fitting on the
first (train split) and scoring on the second (held-out colour-shape pairs):
- linear: a logistic-regression probe on the frozen image embeddings (how much shape they hold);
- supervised: the image tower plus a linear head trained on the shape labels for `--epochs`
  (AdamW 5e-4, batch 128): what the tower can learn at its input size when told directly.

    .venv/bin/python bench/scene_shape.py runs/hn/train runs/hn/heldout --model demo --epochs 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def group_scenes(folder: Path, attribute: str = "shape") -> tuple[list[Path], np.ndarray]:
    from searchengine.demo.scenes import SHAPES, read_scene_attributes

    attributes = read_scene_attributes(folder)
    names = [name for name, row in attributes.items() if row["kind"] == "group"]
    labels = np.array([SHAPES.index(attributes[name][attribute]) for name in names])
    return [folder / "images" / name for name in names], labels


def linear_probe(model: str, train: Path, test: Path) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    from searchengine.demo.run import encode_image_files
    from searchengine.encoder import Encoder

    encoder = Encoder.load(model)
    (train_paths, y_train), (test_paths, y_test) = group_scenes(train), group_scenes(test)
    x_train = encode_image_files(encoder, train_paths, 128)  # (n, d) float32
    x_test = encode_image_files(encoder, test_paths, 128)
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, y_train)
    return classifier.score(x_train, y_train), classifier.score(x_test, y_test)


def supervised(model: str, train: Path, test: Path, epochs: int) -> None:
    import torch
    from PIL import Image

    from searchengine.models import build_model, parse_model_spec

    torch.manual_seed(0)
    clip, preprocess, _ = build_model(parse_model_spec(model), device="cpu")
    visual = clip.visual.float().train()

    def pixels(paths: list[Path]) -> torch.Tensor:  # (n, 3, H, W) float32
        return torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])

    (train_paths, y_train), (test_paths, y_test) = group_scenes(train), group_scenes(test)
    x_train, x_test = pixels(train_paths), pixels(test_paths)
    labels_train, labels_test = torch.from_numpy(y_train), torch.from_numpy(y_test)
    head = torch.nn.Linear(visual.output_dim, 8)
    optimizer = torch.optim.AdamW([*visual.parameters(), *head.parameters()], lr=5e-4,
                                  weight_decay=0.05)

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        visual.eval()
        with torch.no_grad():
            chosen = torch.cat([head(visual(x[i:i + 256])).argmax(1)
                                for i in range(0, len(x), 256)])
        visual.train()
        return float((chosen == y).float().mean())

    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x_train))
        for i in range(0, len(order) - 127, 128):
            chosen = order[i:i + 128]
            loss = torch.nn.functional.cross_entropy(head(visual(x_train[chosen])),
                                                     labels_train[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        fit = accuracy(x_train[:1000], labels_train[:1000])
        print(f"epoch {epoch + 1}: train accuracy {fit:.3f}"
              f", held-out {accuracy(x_test, labels_test):.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train", type=Path, help="a train-split scene collection")
    parser.add_argument("test", type=Path, help="a held-out scene collection")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--epochs", type=int, default=4, help="supervised epochs (0: skip)")
    args = parser.parse_args()
    fit, held_out = linear_probe(args.model, args.train, args.test)
    print(f"linear probe of shape on {args.model}'s image embeddings: train {fit:.3f}, "
          f"held-out {held_out:.3f} (chance 0.125)")
    if args.epochs:
        supervised(args.model, args.train, args.test, args.epochs)


if __name__ == "__main__":
    main()
