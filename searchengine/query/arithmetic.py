"""Query arithmetic: "beach +sunset -people" as a weighted sum of phrase vectors (as rclip offers).

Grammar (`parse_query`):

- A term marker is a `+` or `-` at the start of the query or after whitespace. Everything up to
  the next marker is that term's phrase (surrounding spaces dropped): "beach +sunset -people" is
  beach (+1), sunset (+1), people (-1); "beach + sunset" is the same.
- A marker may carry a weight, a number and a colon right after the sign: `+2:sunset`,
  `-0.5:people`. Weights are read only after a sign ("10:30 meeting" is a phrase).
- The leading phrase without a sign has weight +1.
- A query with no marker after whitespace is one ordinary phrase, exactly as typed: "a t-shirt",
  "well-lit room", "+1 phone" and "-5 degrees" are searched as they are. A sign at the very start
  counts only when a marker follows later ("+2:beach -people").
- A `+` or `-` after a space is always a marker: "Paris - 2019" is Paris minus 2019. Write
  "Paris 2019" (or "Paris-2019") for the phrase.

`combine` makes the query vector: the weighted sum of the terms' unit vectors, normalised.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from searchengine.errors import InvalidInputError

_MARKER = re.compile(r"(?:^|(?<=\s))[+-]")  # a sign at the start or after whitespace
_WEIGHT = re.compile(r"([0-9.][^\s:]*):")  # `2:` or `0.5:` right after the sign
CANCEL_TOLERANCE = 1e-5  # a sum shorter than this times sum(|weights|) is "cancelled"


@dataclass(frozen=True)
class Term:
    """One phrase of a query and its weight (negative: push its matches down)."""

    text: str
    weight: float = 1.0


def has_arithmetic(query: str) -> bool:
    """Whether `query` holds a term marker after whitespace (else it is one ordinary phrase)."""
    return any(match.start() > 0 for match in _MARKER.finditer(query.strip()))


def parse_query(query: str) -> list[Term]:
    """The terms of `query`, in order; InvalidInputError for an empty term or a bad weight.

    A query without markers is one Term(query stripped, 1.0), whatever signs it holds inside
    words or at its start. A blank query is an empty list (the caller decides whether image
    terms make up for it).
    """
    text = query.strip()
    if not text:
        return []
    if not has_arithmetic(text):
        return [Term(text, 1.0)]
    starts = [match.start() for match in _MARKER.finditer(text)]
    terms = []
    if starts[0] > 0:  # the leading phrase without a sign
        terms.append(Term(text[: starts[0]].strip(), 1.0))
    for start, end in zip(starts, [*starts[1:], len(text)], strict=True):
        terms.append(_signed_term(text[start:end], query))
    return terms


def _signed_term(chunk: str, query: str) -> Term:
    """A term from `chunk`, which starts with its sign: `+sunset`, `-0.5:people`, `+ beach`."""
    sign = 1.0 if chunk[0] == "+" else -1.0
    body = chunk[1:]
    weight = 1.0
    found = _WEIGHT.match(body)
    if found is not None:
        weight = _weight(found.group(1), chunk.strip(), query)
        body = body[found.end():]
    phrase = body.strip()
    if not phrase:
        raise InvalidInputError(
            f"empty term {chunk.strip()!r} in the query {query.strip()!r}: write a phrase right "
            f"after each + or -, e.g. 'beach +sunset -0.5:people' (a sign after a space is a "
            "term marker; leave it out to search the words as they are)"
        )
    return Term(phrase, sign * weight)


def _weight(token: str, chunk: str, query: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidInputError(
            f"unparsable weight {token!r} in {chunk!r} of the query {query.strip()!r}: a weight "
            "is a number, a colon and the phrase, e.g. '+2:sunset' or '-0.5:people'"
        )
    return value


def check_weights(weights: list[float]) -> None:
    """InvalidInputError when there is no term, or every weight is 0 (nothing to search for)."""
    if not weights or all(weight == 0 for weight in weights):
        raise InvalidInputError(
            "every term of the query has weight 0: give at least one term a non-zero weight, "
            "e.g. 'beach +2:sunset' or 'beach -0.5:people'"
        )


def combine(vectors: np.ndarray, weights: list[float] | np.ndarray) -> np.ndarray:
    """(1, d) float32 unit vector: sum_i weights[i] * vectors[i], normalised.

    vectors: (n, d) float unit rows; weights: n floats. The sum is taken in float64. One term of
    positive weight returns its row unchanged (an ordinary query keeps its exact vector).
    InvalidInputError when every weight is 0 or the weighted terms cancel (norm below
    CANCEL_TOLERANCE * sum|weights|), e.g. "beach -beach".
    """
    weights = np.asarray(weights, dtype=np.float64)  # (n,)
    if vectors.ndim != 2 or len(vectors) != len(weights):
        raise InvalidInputError(
            f"{len(weights)} weights for vectors of shape {vectors.shape}; give one weight a row"
        )
    check_weights(weights.tolist())
    if len(weights) == 1 and weights[0] > 0:
        return vectors[:1].astype(np.float32, copy=True)
    total = weights @ vectors.astype(np.float64)  # (d,)
    norm = float(np.linalg.norm(total))
    if not norm > CANCEL_TOLERANCE * float(np.abs(weights).sum()):
        raise InvalidInputError(
            "the query's terms cancel out (their weighted sum is the zero vector, as in "
            "'beach -beach'): drop a term or change its weight"
        )
    return (total / norm).astype(np.float32).reshape(1, -1)
