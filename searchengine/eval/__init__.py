"""Evaluation: recall@k and zero-shot benchmarks, caption datasets, metrics, prompts."""
