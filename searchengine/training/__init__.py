"""Contrastive training: adapt a CLIP model to a domain's own image-caption pairs.

`pairs` reads PAIRS sources; `loop.train` runs a training job from `TrainSettings`.
"""
