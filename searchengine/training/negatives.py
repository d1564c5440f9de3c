"""Swapped hard negatives: captions made false by changing one attribute word (NegCLIP-style).

"two small red circles on the left" gives "two small blue circles on the left" (a colour
replaced), "three small red circles on the left" (a count), "... on the right" (a position), and
"a blue star above a green square" gives "a green star above a blue square" (two colours
exchanged). The words come from a `SwapVocabulary`: groups of mutually exclusive entries, each
entry one meaning with one or more spellings (`swap_vocabulary.txt` beside this module is the
default for English; its header documents the file format). A swapped caption that is, after
`normalise_caption`, one of the image's own captions is never produced, and one that is a true
caption of another image in the batch is masked out of the loss for that image (`SwapCollate`).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from searchengine.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

    from searchengine.training.data import Batch
    from searchengine.training.pairs import Pair

DEFAULT_VOCABULARY = Path(__file__).with_name("swap_vocabulary.txt")
HARD_NEGATIVES = ("mined", "swapped", "both")
_GROUP_LINE = re.compile(r"^\s*([A-Za-z][\w-]*)\s*:\s*(.+?)\s*$")


@dataclass(frozen=True)
class SwapVocabulary:
    """Groups of interchangeable attribute words.

    `groups[g]` is a tuple of entries; an entry is a tuple of spellings (lower case, single
    spaces) that mean the same and are never swapped for each other. `names[g]` names group g.
    """

    names: tuple[str, ...]
    groups: tuple[tuple[tuple[str, ...], ...], ...]

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for name, group in zip(self.names, self.groups, strict=True):
            if len(group) < 2:
                raise InvalidInputError(f"swap vocabulary group {name!r} needs at least two "
                                        "entries to swap between")
            for entry in group:
                for spelling in entry:
                    if spelling in seen:
                        raise InvalidInputError(
                            f"swap vocabulary: {spelling!r} is in {seen[spelling]!r} and again "
                            f"in {name!r}; each word may appear once"
                        )
                    seen[spelling] = name
        alternatives = sorted(seen, key=len, reverse=True)  # the longest phrase wins a tie
        pattern = r"(?<!\w)(" + "|".join(re.escape(s) for s in alternatives) + r")(?!\w)"
        object.__setattr__(self, "_pattern", re.compile(pattern, re.IGNORECASE))
        where = {s: (g, e) for g, group in enumerate(self.groups)
                 for e, entry in enumerate(group) for s in entry}
        object.__setattr__(self, "_where", where)

    def matches(self, caption: str) -> list[tuple[int, int, int, int]]:
        """The vocabulary words of `caption`, left to right, never overlapping:
        (start, end, group, entry) for each."""
        found = []
        for match in self._pattern.finditer(caption):  # type: ignore[attr-defined]
            group, entry = self._where[match.group(1).lower()]  # type: ignore[attr-defined]
            found.append((match.start(), match.end(), group, entry))
        return found


def parse_vocabulary(text: str, *, source: str = "<text>") -> SwapVocabulary:
    """A `SwapVocabulary` from the file format (`name: entry, entry | synonym, ...` per line,
    `#` comments). Raises `InvalidInputError` naming the line of a malformed one."""
    names: list[str] = []
    groups: list[tuple[tuple[str, ...], ...]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _GROUP_LINE.match(line)
        if match is None:
            raise InvalidInputError(
                f"{source}:{number}: expected `name: word, word | synonym, ...`, got {line!r}"
            )
        entries = []
        for raw in match.group(2).split(","):
            spellings = tuple(" ".join(s.lower().split()) for s in raw.split("|"))
            if not all(spellings):
                raise InvalidInputError(f"{source}:{number}: an empty word in {line!r}")
            entries.append(spellings)
        if match.group(1) in names:
            raise InvalidInputError(f"{source}:{number}: group {match.group(1)!r} given twice")
        names.append(match.group(1))
        groups.append(tuple(entries))
    if not groups:
        raise InvalidInputError(
            f"{source}: no word groups; see {DEFAULT_VOCABULARY} for the format"
        )
    try:
        return SwapVocabulary(tuple(names), tuple(groups))
    except InvalidInputError as error:
        raise InvalidInputError(f"{source}: {error}") from None


def load_vocabulary(path: str | Path | None = None) -> SwapVocabulary:
    """The vocabulary in the file at `path` (None: the default English one)."""
    path = Path(path) if path is not None else DEFAULT_VOCABULARY
    if not path.is_file():
        raise InvalidInputError(f"no swap vocabulary file at {path}; give an existing file "
                                f"(format: see {DEFAULT_VOCABULARY})")
    return parse_vocabulary(path.read_text(encoding="utf-8"), source=str(path))


def normalise_caption(caption: str) -> str:
    """Lower case, single spaces, no punctuation: captions equal under this say the same."""
    return " ".join(re.sub(r"[^\w\s]", " ", caption.lower()).split())


def swapped_captions(
    caption: str,
    vocabulary: SwapVocabulary,
    count: int,
    rng: np.random.Generator,
    *,
    true_captions: Iterable[str] = (),
    seen_bigrams: frozenset[tuple[tuple[int, int], tuple[int, int]]] | None = None,
) -> list[str]:
    """Up to `count` distinct false captions made from `caption`, chosen at random by `rng`.

    Each one replaces a vocabulary entry by another entry of its group (in a random spelling)
    or exchanges two different entries of one group. Never returns `caption` itself or any of
    `true_captions` (compared after `normalise_caption`); fewer than `count` (possibly none)
    when the caption holds too few vocabulary words. With `seen_bigrams` (`entry_bigrams` of
    the training captions), a swap whose neighbouring vocabulary words never stand side by side
    in them ("red triangle" where no red triangle is ever described) is not made: a combination
    the data never shows is unknown, not false, and as a negative only teaches that its text
    never matches anything.
    """
    matches = vocabulary.matches(caption)
    candidates: list[tuple] = [("replace", i) for i in range(len(matches))]
    candidates += [("swap", i, j) for i in range(len(matches)) for j in range(i + 1, len(matches))
                   if matches[i][2] == matches[j][2] and matches[i][3] != matches[j][3]]
    forbidden = {normalise_caption(caption)} | {normalise_caption(t) for t in true_captions}
    made: list[str] = []
    # rounds over the words in a random order: each word is changed once before any twice, so
    # a few negatives of a caption test different attributes
    for _ in range(count if candidates else 0):
        for index in rng.permutation(len(candidates)):
            if len(made) >= count:
                return made
            text = _apply(caption, matches, candidates[int(index)], vocabulary, rng)
            key = normalise_caption(text)
            if seen_bigrams is not None and not entry_bigrams(text, vocabulary) <= seen_bigrams:
                forbidden.add(key)
                continue
            if key not in forbidden:
                forbidden.add(key)
                made.append(text)
    return made


def entry_bigrams(caption: str, vocabulary: SwapVocabulary) -> set:
    """The pairs of neighbouring vocabulary entries of `caption`, left to right: {((group,
    entry), (group, entry)), ...} (e.g. colour red then shape circle)."""
    entries = [(group, entry) for _, _, group, entry in vocabulary.matches(caption)]
    return set(zip(entries, entries[1:], strict=False))


def _apply(caption: str, matches: list, candidate: tuple, vocabulary: SwapVocabulary,
           rng: np.random.Generator) -> str:
    """One replacement (a random other entry of the group) or one exchange of two entries."""
    if candidate[0] == "replace":
        start, end, group, entry = matches[candidate[1]]
        others = [e for e in range(len(vocabulary.groups[group])) if e != entry]
        new_entry = vocabulary.groups[group][others[int(rng.integers(len(others)))]]
        word = new_entry[int(rng.integers(len(new_entry)))]
        return _article(caption[:start], word) + _same_case(caption[start:end], word) + \
            caption[end:]
    first, second = matches[candidate[1]], matches[candidate[2]]
    a, b = caption[first[0]:first[1]], caption[second[0]:second[1]]
    middle = caption[first[1]:second[0]]
    return (_article(caption[:first[0]], b) + _same_case(a, b.lower())
            + _article(middle, a) + _same_case(b, a.lower()) + caption[second[1]:])


def _article(before: str, word: str) -> str:
    """`before` with a final "a "/"an " agreeing with `word` ("an orange", "a red"), so that a
    swap is not told apart by its grammar."""
    match = re.search(r"(?<!\w)([Aa])n? $", before)
    if match is None:
        return before
    article = match.group(1) + ("n" if word[:1].lower() in "aeiou" else "")
    return before[:match.start()] + article + " "


def _same_case(old: str, new: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


class SwapCollate:
    """A batch `Collate` that adds swapped negative captions to each batch (`Batch.extra_tokens`,
    `Batch.extra_mask`).

    `collate` is the plain one (it tokenises and drops undecodable pairs); `pairs` and
    `image_ids` are the dataset's (`PairDataset.pairs`, `.image_ids`), giving every image's true
    captions. The negatives of a caption are a function of (seed, the caption, the batch's image
    ids), so they do not depend on the number of decode workers. With `seen_only`, only swaps
    whose neighbouring attribute words stand side by side in some training caption are made
    (see `swapped_captions`).
    """

    def __init__(self, collate: Callable[[list], Batch], tokenizer: Callable,
                 pairs: Sequence[Pair], image_ids: Sequence[int], vocabulary: SwapVocabulary, *,
                 per_caption: int, seed: int, seen_only: bool = True):
        self.collate, self.tokenizer, self.vocabulary = collate, tokenizer, vocabulary
        self.per_caption, self.seed = per_caption, seed
        truths: dict[int, set[str]] = {}
        for pair, image_id in zip(pairs, image_ids, strict=True):
            truths.setdefault(image_id, set()).add(normalise_caption(pair.caption))
        self.true_captions = {key: frozenset(value) for key, value in truths.items()}
        self.seen_bigrams = frozenset().union(
            *(entry_bigrams(pair.caption, vocabulary) for pair in pairs)) if seen_only else None

    def __call__(self, items: list) -> Batch:
        import torch

        batch = self.collate(items)
        kept = [item for item in items if item[0] is not None]
        ids = [int(item[2]) for item in kept]
        batch_key = zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())
        extra: list[str] = []
        for _, caption, image_id in kept:
            rng = np.random.default_rng([self.seed, zlib.crc32(caption.encode()), batch_key])
            extra += swapped_captions(caption, self.vocabulary, self.per_caption, rng,
                                      true_captions=self.true_captions[int(image_id)],
                                      seen_bigrams=self.seen_bigrams)
        if not extra:
            return batch
        keys = [normalise_caption(text) for text in extra]
        mask = torch.tensor([[key in self.true_captions[i] for key in keys] for i in ids],
                            dtype=torch.bool)  # (n, m): True where the swap is true of image i
        return dataclasses.replace(batch, extra_tokens=self.tokenizer(extra), extra_mask=mask)


def extra_text_mask(mask: torch.Tensor | None, n: int, m: int, device) -> torch.Tensor:
    """The (n, m) bool mask of extra captions that are not negatives (all False when None)."""
    import torch

    if mask is None:
        return torch.zeros((n, m), dtype=torch.bool, device=device)
    return mask.to(device)
