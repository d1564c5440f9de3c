"""Recall@k: the fast code against a naive loop and against LAION's clip_benchmark."""

from __future__ import annotations

import numpy as np
import pytest
from float_noise import assert_recall_close, caption_owners, near_tie_queries, recall_slack

from searchengine.errors import InvalidInputError
from searchengine.eval import benchmark
from searchengine.eval.metrics import retrieval_metrics

KS = (1, 2, 5, 10)


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_data(seed: int = 0, n_images: int = 30, per_image: int = 5, noise: float = 2.5):
    """Images, captions near their image (so ranks spread over 1..n), and the owner of each."""
    rng = np.random.default_rng(seed)
    images = unit(rng, n_images)
    text_to_image = np.repeat(np.arange(n_images), per_image)
    texts = images[text_to_image] + noise * unit(rng, len(text_to_image))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    return images, texts.astype(np.float32), text_to_image


def naive_recall(images, texts, text_to_image, ks):
    """Recall@k by the protocol's words, one query at a time."""
    t2i = {k: 0 for k in ks}
    for t, own in enumerate(text_to_image):
        order = sorted(range(len(images)), key=lambda i: -float(texts[t] @ images[i]))
        for k in ks:
            t2i[k] += own in order[:k]
    i2t = {k: 0 for k in ks}
    for i in range(len(images)):
        order = sorted(range(len(texts)), key=lambda t: -float(images[i] @ texts[t]))
        for k in ks:
            i2t[k] += any(text_to_image[t] == i for t in order[:k])
    return (
        {k: v / len(texts) for k, v in t2i.items()},
        {k: v / len(images) for k, v in i2t.items()},
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_equal_a_naive_loop(seed):
    images, texts, owners = make_data(seed)
    metrics = retrieval_metrics(images, texts, owners, KS)
    t2i, i2t = naive_recall(images, texts, owners, KS)
    slack = recall_slack(images, texts, owners)  # one dot at a time vs a matrix product
    assert_recall_close(metrics.text_to_image, t2i, slack[0])
    assert_recall_close(metrics.image_to_text, i2t, slack[1])
    assert 0 < metrics.text_to_image[1] < metrics.text_to_image[10] < 1  # the data is not trivial


def test_blockwise_exact_ranks_equal_the_whole_matrix(monkeypatch):
    images, texts, owners = make_data(3, n_images=40)
    whole = benchmark.exact_ranks(images, texts, owners)
    monkeypatch.setattr(benchmark, "_BLOCK", 7)  # blocks that do not divide either count
    blocked = benchmark.exact_ranks(images, texts, owners)
    # a block's matrix product may round otherwise than the whole one's: ranks agree except
    # where a query's first hit ties with another candidate within float noise
    similarity = texts.astype(np.float64) @ images.astype(np.float64).T
    positive = caption_owners(owners, len(images))
    dim = images.shape[1]
    for got, expected, tied in (
        (blocked[0], whole[0], near_tie_queries(similarity, positive, dim)),
        (blocked[1], whole[1], near_tie_queries(similarity.T, positive.T, dim)),
    ):
        np.testing.assert_array_equal(got[~tied], expected[~tied])
    reference = retrieval_metrics(images, texts, owners, KS)
    slack = recall_slack(images, texts, owners)
    assert_recall_close(benchmark.recall_at(blocked[0], KS), reference.text_to_image, slack[0])
    assert_recall_close(benchmark.recall_at(blocked[1], KS), reference.image_to_text, slack[1])


def clip_benchmark_recall(images, texts, owners, ks):
    """clip_benchmark's own `evaluate`, fed the vectors through a pass-through model."""
    import torch
    from clip_benchmark.metrics import zeroshot_retrieval

    class Lookup(torch.nn.Module):
        def encode_image(self, rows):  # rows: (b,) int64 image indices
            return torch.from_numpy(images)[rows]

        def encode_text(self, rows):  # rows: (b,) int64 caption indices
            return torch.from_numpy(texts)[rows]

    captions_of = [np.flatnonzero(owners == i).tolist() for i in range(len(images))]
    batch = 8  # several batches, as a DataLoader would give them
    loader = [
        (torch.arange(start, min(start + batch, len(images))),
         [[str(t) for t in captions_of[i]] for i in range(start, min(start + batch, len(images)))])
        for start in range(0, len(images), batch)
    ]

    def tokenizer(strings):
        return torch.tensor([int(s) for s in strings])

    result = zeroshot_retrieval.evaluate(
        Lookup(), loader, tokenizer, "cpu", amp=False, recall_k_list=list(ks)
    )
    return (
        {k: result[f"image_retrieval_recall@{k}"] for k in ks},
        {k: result[f"text_retrieval_recall@{k}"] for k in ks},
    )


@pytest.mark.parametrize("seed", [0, 4])
def test_recall_equals_clip_benchmark_on_the_same_vectors(seed):
    images, texts, owners = make_data(seed, n_images=27, per_image=5)
    # clip_benchmark stores captions image by image; ours are in that order too
    reference_t2i, reference_i2t = clip_benchmark_recall(images, texts, owners, KS)
    ours = retrieval_metrics(images, texts, owners, KS)
    t2i_slack, i2t_slack = recall_slack(images, texts, owners)  # torch's matmul vs numpy's
    assert_recall_close(ours.text_to_image, reference_t2i, t2i_slack)
    assert_recall_close(ours.image_to_text, reference_i2t, i2t_slack)
    text_ranks, image_ranks = benchmark.exact_ranks(images, texts, owners)
    assert_recall_close(benchmark.recall_at(text_ranks, KS), reference_t2i, t2i_slack)
    assert_recall_close(benchmark.recall_at(image_ranks, KS), reference_i2t, i2t_slack)


def test_an_image_without_captions_never_hits_like_clip_benchmark():
    images, texts, owners = make_data(5, n_images=10, per_image=2)
    owners = np.where(owners == 3, 4, owners)  # image 3 loses its captions
    ours = retrieval_metrics(images, texts, owners, (1, 5, 10, 20))
    t2i, i2t = naive_recall(images, texts, owners, (1, 5, 10, 20))
    assert_recall_close(ours.image_to_text, i2t, recall_slack(images, texts, owners)[1])
    assert ours.image_to_text[20] == pytest.approx(0.9)  # 9 of 10 images can ever hit
    import torch
    from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k

    scores = torch.from_numpy(images @ texts.T)
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.from_numpy(owners), torch.arange(len(owners))] = True
    assert (recall_at_k(scores, positive, k=20) > 0).float().mean().item() == pytest.approx(0.9)


def test_first_hit_ranks_equal_a_naive_loop():
    rng = np.random.default_rng(0)
    hits = rng.integers(-1, 12, size=(50, 6))
    positives = np.unique(np.stack([rng.integers(0, 50, 80), rng.integers(0, 12, 80)], 1), axis=0)
    ranks = benchmark.first_hit_ranks(hits, positives, miss_rank=99)
    wanted = {(int(q), int(c)) for q, c in positives}
    for q in range(len(hits)):
        expected = next(
            (r + 1 for r, c in enumerate(hits[q]) if c >= 0 and (q, int(c)) in wanted), 99
        )
        assert ranks[q] == expected
    assert (ranks < 99).any() and (ranks == 99).any()


def test_top_k_accuracy_equals_a_naive_loop():
    rng = np.random.default_rng(1)
    images, labels = unit(rng, 40), unit(rng, 7)
    targets = rng.integers(0, 7, 40)
    accuracy = benchmark.top_k_accuracy(images, labels, targets, (1, 3, 5))
    for k in (1, 3, 5):
        pairs = zip(images, targets, strict=True)
        naive = np.mean([t in np.argsort(-(labels @ x))[:k] for x, t in pairs])
        assert accuracy[k] == pytest.approx(naive)


def test_bad_metric_input_is_an_error():
    images, texts, owners = make_data(0, n_images=3, per_image=1)
    with pytest.raises(InvalidInputError):
        retrieval_metrics(images, texts, owners[:2], KS)
