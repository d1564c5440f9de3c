"""Swapped hard negatives: captions made false by changing one attribute word (NegCLIP-style).

"two small red circles on the left" gives "two small blue circles on the left" (a colour
replaced), "three small red circles on the left" (a count), "... on the right" (a position), and
"a blue star above a green square" gives "a green star above a blue square" (two colours
exchanged). The words come from a `SwapVocabulary`: groups of mutually exclusive entries, each
entry one meaning with one or more spellings (`swap_vocabulary.txt` beside this module is the
default for English; its header documents the file format). A swapped caption that is, after
`normalise_caption`, one of the image's own captions is never produced, and one that is a true
caption of another image in the batch is masked out of the loss for that image (`SwapCollate`).

A swap must not be told apart by its grammar alone, or the model learns grammar instead of the
attribute: articles follow the new word ("an orange" / "a red"), and with number agreement in
the vocabulary (`@singular`, `@plural`, `@verbs` lines) a count swap between one and more
changes its noun and verb too ("there is one red circle" -> "there are two red circles").
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
_NUMBER_LINE = re.compile(r"^\s*@(singular|plural)\s+([A-Za-z][\w-]*)\s*:\s*(.+?)\s*$")
_VERBS_LINE = re.compile(r"^\s*@verbs\s*:\s*(.+?)\s*$")


@dataclass(frozen=True)
class SwapVocabulary:
    """Groups of interchangeable attribute words.

    `groups[g]` is a tuple of entries; an entry is a tuple of spellings (lower case, single
    spaces) that mean the same and are never swapped for each other. `names[g]` names group g.

    Number agreement (all optional): `singular` gives, for each count group, its singular
    entries (the others are plural); `plurals` pairs a group of singular nouns with the group of
    their plurals, entry by entry; `verbs` pairs singular and plural verbs ("is", "are").
    """

    names: tuple[str, ...]
    groups: tuple[tuple[tuple[str, ...], ...], ...]
    singular: tuple[tuple[int, frozenset[int]], ...] = ()
    plurals: tuple[tuple[int, int], ...] = ()
    verbs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        inflected_only = {g for pair in self.plurals for g in pair}
        for index, (name, group) in enumerate(zip(self.names, self.groups, strict=True)):
            if len(group) < 2 and index not in inflected_only:
                raise InvalidInputError(f"swap vocabulary group {name!r} needs at least two "
                                        "entries to swap between (or a @plural line: a noun "
                                        "of one entry only agrees with a count)")
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
        self._check_number()

    def _check_number(self) -> None:
        nouns: dict[int, tuple[int, bool]] = {}  # noun group -> (its other-number group, plural?)
        for one, many in self.plurals:
            for group in (one, many):
                if group in nouns:
                    raise InvalidInputError(f"swap vocabulary: group {self.names[group]!r} is "
                                            "paired with a plural more than once")
            if len(self.groups[one]) != len(self.groups[many]):
                raise InvalidInputError(
                    f"swap vocabulary: {self.names[one]!r} and its plurals {self.names[many]!r} "
                    "need as many entries each, in the same order")
            nouns[one], nouns[many] = (many, False), (one, True)
        counts = dict(self.singular)
        for group in counts:
            if group in nouns:
                raise InvalidInputError(f"swap vocabulary: group {self.names[group]!r} cannot "
                                        "be both a count and a noun")
        verbs = {one: many for one, many in self.verbs} | {many: one for one, many in self.verbs}
        if len(verbs) != 2 * len(self.verbs):
            raise InvalidInputError("swap vocabulary: each verb may appear once in @verbs")
        object.__setattr__(self, "_nouns", nouns)
        object.__setattr__(self, "_counts", counts)
        object.__setattr__(self, "_verbs", verbs)

    def is_count(self, group: int) -> bool:
        """Whether `group` is a count with number agreement (`@singular`)."""
        return group in self._counts  # type: ignore[attr-defined]

    def is_singular(self, group: int, entry: int) -> bool:
        return entry in self._counts[group]  # type: ignore[attr-defined]

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
    number_lines: list[tuple[int, str, str, str]] = []  # (line number, kind, group, entries)
    verbs: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.lstrip().startswith("@"):  # number agreement
            if _VERBS_LINE.match(line):
                verbs += _parse_verbs(line, f"{source}:{number}")
            elif (directive := _NUMBER_LINE.match(line)) is not None:
                kind, group_name, value = directive.group(1, 2, 3)
                number_lines.append((number, kind, group_name, value))
            else:
                raise InvalidInputError(
                    f"{source}:{number}: expected `@singular GROUP: entry, ...`, `@plural GROUP: "
                    f"GROUP` or `@verbs: singular = plural, ...`, got {line!r}")
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
    singular: list[tuple[int, frozenset[int]]] = []
    plurals: list[tuple[int, int]] = []
    for number, kind, name, value in number_lines:
        where = f"{source}:{number}"
        group = _group_index(names, name, where)
        if kind == "plural":
            plurals.append((group, _group_index(names, value.strip(), where)))
            continue
        entry_of = {s: e for e, entry in enumerate(groups[group]) for s in entry}
        chosen: set[int] = set()
        for word in (" ".join(w.lower().split()) for w in value.split(",")):
            if word not in entry_of:
                raise InvalidInputError(f"{where}: {word!r} is not an entry of group {name!r}")
            chosen.add(entry_of[word])
        if len(chosen) == len(groups[group]) or any(g == group for g, _ in singular):
            raise InvalidInputError(f"{where}: give group {name!r} one @singular line that "
                                    "leaves it a plural entry")
        singular.append((group, frozenset(chosen)))
    try:
        return SwapVocabulary(tuple(names), tuple(groups), tuple(singular), tuple(plurals),
                              tuple(verbs))
    except InvalidInputError as error:
        raise InvalidInputError(f"{source}: {error}") from None


def _group_index(names: list[str], name: str, where: str) -> int:
    if name not in names:
        raise InvalidInputError(f"{where}: no group {name!r} in this vocabulary "
                                f"(groups: {', '.join(names)})")
    return names.index(name)


def _parse_verbs(line: str, where: str) -> list[tuple[str, str]]:
    pairs = []
    for raw in _VERBS_LINE.match(line).group(1).split(","):  # type: ignore[union-attr]
        words = [" ".join(w.lower().split()) for w in raw.split("=")]
        if len(words) != 2 or not all(words):
            raise InvalidInputError(f"{where}: expected `@verbs: singular = plural, ...`, "
                                    f"got {line!r}")
        pairs.append((words[0], words[1]))
    return pairs


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
            if text is None:
                continue
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
           rng: np.random.Generator) -> str | None:
    """One replacement (a random other entry of the group) or one exchange of two entries, with
    the edits number agreement asks for; None when no grammatical caption results."""
    if candidate[0] == "replace":
        index = candidate[1]
        _, _, group, entry = matches[index]
        others = [e for e in range(len(vocabulary.groups[group])) if e != entry]
        if not others:
            return None  # a noun of one entry ("shape"), kept only for number agreement
        if vocabulary.is_count(group) and _noun_after(caption, matches, index, vocabulary) is None:
            # no noun to agree with: keep the number ("two" <-> "three" only)
            others = [e for e in others if vocabulary.is_singular(group, e)
                      == vocabulary.is_singular(group, entry)]
            if not others:
                return None
        new_entry = others[int(rng.integers(len(others)))]
        spellings = vocabulary.groups[group][new_entry]
        changes = [(index, new_entry, spellings[int(rng.integers(len(spellings)))])]
    else:
        first, second = candidate[1], candidate[2]
        text = [caption[matches[i][0]:matches[i][1]].lower() for i in (first, second)]
        changes = [(first, matches[second][3], text[1]), (second, matches[first][3], text[0])]
    edits = [(matches[i][0], matches[i][1], word) for i, _, word in changes]
    for index, new_entry, _ in changes:
        agreeing = _agreement(caption, matches, index, new_entry, vocabulary)
        if agreeing is None:
            return None
        edits += agreeing
    edits.sort()
    if any(a[1] > b[0] for a, b in zip(edits, edits[1:], strict=False)):
        return None  # two changes meet (a verb shared by two counts): leave this one out
    out, position = "", 0
    for start, end, word in edits:
        out = _article(out + caption[position:start], word) + _same_case(caption[start:end], word)
        position = end
    return out + caption[position:]


def _noun_after(caption: str, matches: list, index: int,
                vocabulary: SwapVocabulary) -> int | None:
    """The match index of the noun a count agrees with: the first noun of a paired group in the
    run of vocabulary words right after it ("two small red circles"), else None."""
    for k in range(index + 1, len(matches)):
        if caption[matches[k - 1][1]:matches[k][0]].strip():
            return None  # another word comes between: "one of the circles"
        if matches[k][2] in vocabulary._nouns:  # type: ignore[attr-defined]
            return k
    return None


def _agreement(caption: str, matches: list, index: int, new_entry: int,
               vocabulary: SwapVocabulary) -> list[tuple[int, int, str]] | None:
    """The edits (start, end, word) that make the noun, and a verb right before the count or
    right after the noun, agree with count entry `new_entry`; None when they cannot."""
    group, entry = matches[index][2], matches[index][3]
    if not vocabulary.is_count(group):
        return []
    plural = not vocabulary.is_singular(group, new_entry)
    if plural != (not vocabulary.is_singular(group, entry)):
        noun = _noun_after(caption, matches, index, vocabulary)
        if noun is None:
            return None
        start, end, noun_group, noun_entry = matches[noun]
        other, is_plural = vocabulary._nouns[noun_group]  # type: ignore[attr-defined]
        if is_plural == plural:
            return []
        spelling = vocabulary.groups[noun_group][noun_entry].index(caption[start:end].lower())
        forms = vocabulary.groups[other][noun_entry]
        edits = [(start, end, forms[min(spelling, len(forms) - 1)])]
        verbs = vocabulary._verbs  # type: ignore[attr-defined]
        if verbs:
            words = "|".join(re.escape(v) for v in verbs)
            before = re.search(rf"(?<!\w)({words})\s+$", caption[:matches[index][0]], re.I)
            after = re.match(rf"\s+({words})(?!\w)", caption[end:], re.I)
            if before is not None:
                edits.append((before.start(1), before.end(1), verbs[before.group(1).lower()]))
            if after is not None:
                edits.append((end + after.start(1), end + after.end(1),
                              verbs[after.group(1).lower()]))
        return edits
    return []


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
