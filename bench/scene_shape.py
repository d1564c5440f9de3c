"""Is shape in a scene model's image tower at all, and what keeps the tower from learning it?

Measurements on the group scenes (one kind of object) of scene collections, fitting on the first
(train split) and scoring on the others:
- linear: a logistic-regression probe on the frozen image embeddings (how much shape they hold);
- supervised: the image tower plus a linear head trained on the shape labels for `--epochs`
  (AdamW 5e-4, weight decay 0.05, batch 128): what the tower can learn when told directly.

`--towers` trains several towers the same way on the same scenes, to separate the causes:
`model` (the `--model`'s tower with its weights), `vit64` (the same architecture, random init),
`vit128-p16` / `vit128-p8` (128 px input: the same 64 tokens / 4x the tokens), `vit64-wide`
(width 256, 6 layers), `resnet18` (torchvision, random init, the same 64 px pixels: is shape
visible in them at all) and `rn64` / `rn128` (se-scenes-rn's convolutional tower, random init,
at its 64 px and at 128 px: does the input resolution limit it). Each is scored after every
epoch on its training scenes (the first 1,000), on `--fresh` scenes of the train split (a new
seed: the same colour-shape pairs, so knowing which shapes a colour comes with still helps) and
on the held-out split (colour-shape pairs never seen: only shape recognition works). Chance is
0.125. After the last epoch each tower's accuracy per true shape is printed for every scored set
(which shapes it cannot tell); `--shapes` keeps only the scenes of some shapes.

    .venv/bin/python bench/scene_shape.py runs/hn/train runs/hn/heldout --model demo --epochs 4
    .venv/bin/python bench/scene_shape.py runs/hn/train runs/hn/heldout --fresh runs/hn/trainprobe \
        --towers model,vit64,vit128-p16,vit128-p8,vit64-wide,resnet18 --epochs 4 --linear 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

# Vision configs that differ from se-scenes (64 px, patch 8, width 128, 4 layers, head width 32).
VIT_VARIANTS: dict[str, dict] = {
    "vit64": {},
    "vit128-p16": {"image_size": 128, "patch_size": 16},
    "vit128-p8": {"image_size": 128},
    "vit64-wide": {"width": 256, "layers": 6},
}
# se-scenes-rn's ModifiedResNet tower (layers 2-2-2-2, width 16) at these input sizes.
RN_VARIANTS: dict[str, dict] = {"rn64": {"image_size": 64}, "rn128": {"image_size": 128}}
TOWERS = ("model", *VIT_VARIANTS, "resnet18", *RN_VARIANTS)
EVAL_LIMIT = 1000  # training scenes scored after each epoch


def group_scenes(folder: Path, attribute: str = "shape",
                 shapes: tuple[str, ...] | None = None) -> tuple[list[Path], np.ndarray]:
    """The group scenes of `folder` (only those of `shapes`, when given): image paths and
    labels (indices into SHAPES)."""
    from searchengine.demo.scenes import SHAPES, read_scene_attributes

    attributes = read_scene_attributes(folder)
    names = [name for name, row in attributes.items() if row["kind"] == "group"
             and (shapes is None or row["shape"] in shapes)]
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


@dataclass(frozen=True)
class Tower:
    """An image tower to train on shape: `module` maps (n, 3, size, size) float32 pixels to
    (n, width) float32 features."""

    name: str
    module: object  # torch.nn.Module
    width: int
    image_size: int
    description: str


def build_tower(name: str, model: str, seed: int) -> Tower:
    """The tower `name` of TOWERS (random init seeded by `seed`, but `model`: its weights)."""
    import torch

    torch.manual_seed(seed)
    if name == "model":
        from searchengine.models import build_model, parse_model_spec

        visual = build_model(parse_model_spec(model), device="cpu", seed=seed)[0].visual
        size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
        return Tower(name, visual.float(), visual.output_dim, int(size), f"{model}'s weights")
    if name == "resnet18":
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        net.fc = torch.nn.Identity()
        return Tower(name, net, 512, 64, "torchvision resnet18, random init")
    if name in RN_VARIANTS:
        visual, cfg = _open_clip_tower(name, "se-scenes-rn", RN_VARIANTS[name])
        return Tower(name, visual, visual.output_dim, cfg["image_size"],
                     f"se-scenes-rn's ResNet at {cfg['image_size']} px, random init")
    if name not in VIT_VARIANTS:
        raise SystemExit(f"unknown tower {name!r}; choose from {', '.join(TOWERS)}")
    visual, cfg = _open_clip_tower(name, "se-scenes", VIT_VARIANTS[name])
    tokens = (cfg["image_size"] // cfg["patch_size"]) ** 2
    return Tower(name, visual, visual.output_dim, cfg["image_size"],
                 f"ViT {cfg['image_size']} px, patch {cfg['patch_size']} ({tokens} tokens), "
                 f"width {cfg['width']}, {cfg['layers']} layers, random init")


def _open_clip_tower(name: str, base: str, changes: dict) -> tuple:
    """The image tower of the bundled config `base` with `changes` to its vision config, built
    by open_clip (random init, seeded by the caller): (module, the vision config)."""
    import open_clip

    from searchengine.models import CONFIG_DIR

    config = json.loads((CONFIG_DIR / f"{base}.json").read_text())
    config["vision_cfg"].update(changes)
    arch = f"se-shape-{name}"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"{arch}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder)
    clip = open_clip.create_model(arch, pretrained=None, device="cpu")
    return clip.visual.float(), config["vision_cfg"]


def load_pixels(paths: list[Path], size: int):
    """(n, 3, size, size) float32: open_clip's validation transform (as build_model's)."""
    import open_clip
    import torch
    from PIL import Image

    preprocess = open_clip.image_transform(size, is_train=False)
    pixels = torch.empty(len(paths), 3, size, size)  # filled in place: no second copy in memory
    for i, path in enumerate(paths):
        pixels[i] = preprocess(Image.open(path).convert("RGB"))
    return pixels


def train_tower(tower: Tower, sets: dict[str, tuple[list[Path], np.ndarray]], *, epochs: int,
                seed: int, pixels: dict) -> dict:
    """Train `tower` + a linear head on the shape labels of `sets["train"]`; after every epoch
    score every set (the training set on its first EVAL_LIMIT scenes). `pixels` caches the
    decoded sets by (name, image size). Returns {"epochs": [{set: accuracy, "seconds": s}]}."""
    import torch

    for set_name, (paths, _) in sets.items():
        if (set_name, tower.image_size) not in pixels:
            pixels[set_name, tower.image_size] = load_pixels(paths, tower.image_size)
    x = {name: pixels[name, tower.image_size] for name in sets}
    y = {name: torch.from_numpy(labels) for name, (_, labels) in sets.items()}
    x["train-fit"], y["train-fit"] = x["train"][:EVAL_LIMIT], y["train"][:EVAL_LIMIT]
    torch.manual_seed(seed)
    visual = tower.module.train()
    head = torch.nn.Linear(tower.width, 8)
    optimizer = torch.optim.AdamW([*visual.parameters(), *head.parameters()], lr=5e-4,
                                  weight_decay=0.05)

    def choose(images: torch.Tensor) -> torch.Tensor:
        visual.eval()
        with torch.no_grad():
            chosen = torch.cat([head(visual(images[i:i + 256])).argmax(1)
                                for i in range(0, len(images), 256)])
        visual.train()
        return chosen

    def accuracy(images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((choose(images) == labels).float().mean())

    scored = ["train-fit", *(name for name in sets if name != "train")]
    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x["train"]))
        for i in range(0, len(order) - 127, 128):
            chosen = order[i:i + 128]
            loss = torch.nn.functional.cross_entropy(head(visual(x["train"][chosen])),
                                                     y["train"][chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        row = {name: accuracy(x[name], y[name]) for name in scored}
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        print(f"{tower.name} epoch {epoch + 1}: "
              + ", ".join(f"{name} {row[name]:.3f}" for name in scored)
              + f" ({row['seconds']:.0f} s)", flush=True)
    parameters = sum(p.numel() for p in visual.parameters())
    by_shape = {name: per_shape(choose(x[name]).numpy(), y[name].numpy()) for name in scored}
    for name, accuracies in by_shape.items():
        print(f"{tower.name} {name} by shape: "
              + ", ".join(f"{shape} {value:.2f}" for shape, value in accuracies.items()
                          if value is not None), flush=True)
    return {"tower": tower.name, "description": tower.description,
            "image_size": tower.image_size, "parameters": parameters, "epochs": history,
            "by_shape": by_shape}


def per_shape(chosen: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """{shape: the accuracy on the scenes of that true shape (None: none)} in SHAPES order;
    `chosen` and `labels` hold indices into SHAPES."""
    from searchengine.demo.scenes import SHAPES

    return {shape: float(np.mean(chosen[labels == i] == i)) if (labels == i).any() else None
            for i, shape in enumerate(SHAPES)}


def supervised(model: str, train: Path, test: Path, epochs: int) -> None:
    """The `--model`'s tower trained on shape (the one-tower form of `compare`)."""
    sets = {"train": group_scenes(train), "held-out": group_scenes(test)}
    train_tower(build_tower("model", model, 0), sets, epochs=epochs, seed=0, pixels={})


def compare(towers: list[str], model: str, sets: dict, *, epochs: int, seed: int) -> list[dict]:
    """train_tower for each of `towers`, one after the other, on the same decoded scenes."""
    pixels: dict = {}
    return [train_tower(build_tower(name, model, seed), sets, epochs=epochs, seed=seed,
                        pixels=pixels) for name in towers]


def print_table(results: list[dict], sets: list[str]) -> None:
    """A Markdown table: each tower's accuracy on each set after its last epoch."""
    print("| tower | parameters | " + " | ".join(sets) + " | seconds |")
    print("|---|---|" + "---|" * len(sets) + "---|")
    for result in results:
        last = result["epochs"][-1]
        print(f"| {result['tower']}: {result['description']} | "
              f"{result['parameters'] / 1e6:.2f}M | "
              + " | ".join(f"{last[name]:.3f}" for name in sets) + f" | {last['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train", type=Path, help="a train-split scene collection")
    parser.add_argument("test", type=Path, help="a held-out scene collection")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--epochs", type=int, default=4, help="supervised epochs (0: skip)")
    parser.add_argument("--linear", type=int, default=1, help="1: run the linear probe, 0: skip")
    parser.add_argument("--fresh", type=Path, help="a second train-split collection (new seed)")
    parser.add_argument("--towers", help=f"comma-separated, of: {', '.join(TOWERS)}")
    parser.add_argument("--train-limit", type=int, help="train on the first N group scenes")
    parser.add_argument("--shapes", help="comma-separated: only scenes of these shapes (e.g. "
                                         "circle,hexagon: can a tower tell the two apart)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/NAME.json")
    parser.add_argument("--name", default="scene_shape", help="the record's NAME")
    args = parser.parse_args()
    if args.linear:
        fit, held_out = linear_probe(args.model, args.train, args.test)
        print(f"linear probe of shape on {args.model}'s image embeddings: train {fit:.3f}, "
              f"held-out {held_out:.3f} (chance 0.125)")
    if not args.epochs:
        return
    if not args.towers:
        supervised(args.model, args.train, args.test, args.epochs)
        return
    shapes = None
    if args.shapes:
        from searchengine.demo.scenes import SHAPES

        shapes = tuple(args.shapes.split(","))
        if unknown := set(shapes) - set(SHAPES):
            raise SystemExit(f"unknown shapes {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    paths, labels = group_scenes(args.train, shapes=shapes)
    sets = {"train": (paths[:args.train_limit], labels[:args.train_limit])}
    if args.fresh:
        sets["fresh train-split"] = group_scenes(args.fresh, shapes=shapes)
    sets["held-out"] = group_scenes(args.test, shapes=shapes)
    print(f"{len(sets['train'][0])} training scenes; "
          + ", ".join(f"{name} {len(p)}" for name, (p, _) in sets.items() if name != "train"),
          flush=True)
    results = compare(args.towers.split(","), args.model, sets, epochs=args.epochs,
                      seed=args.seed)
    scored = ["train-fit", *(name for name in sets if name != "train")]
    print_table(results, scored)
    if args.record:
        write_result(args.name, {"sizes": {name: len(p) for name, (p, _) in sets.items()},
                                 "shapes": list(shapes) if shapes else None,
                                 "epochs": args.epochs, "seed": args.seed, "towers": results})


if __name__ == "__main__":
    main()
