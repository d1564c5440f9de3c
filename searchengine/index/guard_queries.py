"""Sentences the recall guard searches with when a home holds photos and no texts.

Text queries sit across CLIP's modality gap, away from every photo, so an index tuned on photo
queries alone can miss their neighbours (`tuning`): HNSW tuned to recall 0.95 on photos gave
0.84 on captions. A home of photos alone has no captions to tune on; these sentences, encoded by
the home's own model, stand in for what people type: everyday subjects of photo collections
in the forms queries take ("a dog", "a photo of a dog on a beach", "dogs at night").
"""

from __future__ import annotations

SUBJECTS = (
    "dog", "cat", "horse", "bird", "cow", "sheep", "fish", "person", "man", "woman", "child",
    "baby", "family", "group of friends", "couple", "crowd", "runner", "cyclist", "skier",
    "surfer", "car", "bicycle", "motorcycle", "bus", "train", "boat", "airplane", "truck",
    "house", "church", "bridge", "tower", "castle", "street", "market", "shop", "restaurant",
    "kitchen", "living room", "bedroom", "office", "garden", "park", "playground", "farm",
    "forest", "tree", "flower", "field", "mountain", "lake", "river", "waterfall", "beach",
    "sea", "island", "desert", "snowy landscape", "city skyline", "village", "road", "harbour",
    "stadium", "concert", "wedding", "birthday party", "dinner table", "cake", "pizza",
    "coffee cup", "fruit", "vegetables", "bottle of wine", "book", "laptop", "phone",
    "television", "sofa", "chair", "bed", "clock", "umbrella", "backpack", "suitcase", "hat",
    "dress", "shoes", "toy", "ball", "kite", "painting", "sculpture", "statue", "fountain",
    "sunset", "sunrise", "rainbow", "fireworks", "night sky", "storm",
)
TEMPLATES = (
    "{}",
    "a {}",
    "a photo of a {}",
    "a close-up of a {}",
    "a {} at night",
    "a {} in the rain",
    "a blurry photo of a {}",
    "a {} seen from above",
    "a {} in the snow",
    "an old photo of a {}",
)


def guard_sentences(count: int) -> list[str]:
    """`count` distinct sentences (at most len(SUBJECTS) * len(TEMPLATES)): every subject once
    before any comes back, each round in the next form, so the same list on every machine."""
    made = [TEMPLATES[(index + round_) % len(TEMPLATES)].format(subject)
            for round_ in range(len(TEMPLATES)) for index, subject in enumerate(SUBJECTS)]
    return made[:count]
