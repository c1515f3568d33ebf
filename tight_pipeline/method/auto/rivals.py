"""Rival answers for the landed check of automatic strength: what else an edit could have turned the photo into.

    run_vocabulary([("a red mug", "a teal mug"), ("a blue box", "a red box")])  # Counter(red=2, teal=1, blue=1)
    rival_prompts("a red mug", "a teal mug", ("red", "teal", "blue"))            # ["a blue mug"]

A failed colour edit rarely leaves the source colour: it lands on a neighbouring one (teal asked, blue made).
Weighed against the source prompt alone, such an edit still "fits the edit prompt better"; weighed against the
other answers the run itself asks about, it does not. The rivals are those answers: every phrase the run's edits
take out or put in (``changed_span``: "red" -> "teal"), collected from the prompts of the whole manifest (what a
catalog run has: no labels, no classifier), plus any the preset names (``auto_rivals``). Pure text, no torch:
the job planner collects the vocabulary while it streams the manifest.
"""

from __future__ import annotations

from collections import Counter

MAX_RIVALS = 16  # the most rival phrases a run keeps by default (``Preset.auto_max_rivals``): the judge's cost


def changed_span(source: str, edit: str) -> tuple[str, str, list[str], list[str]]:
    """Where an edit prompt differs from its source prompt, word by word: ``(removed, inserted, head, tail)``,
    the words the edit takes out and puts in, between the common first and last words (``head``, ``tail``).
    "a red striped mug" -> "a teal striped mug" gives ``("red", "teal", ["a"], ["striped", "mug"])``."""
    s, e = source.split(), edit.split()
    i = 0
    while i < min(len(s), len(e)) and s[i] == e[i]:
        i += 1
    j = 0
    while j < min(len(s), len(e)) - i and s[len(s) - 1 - j] == e[len(e) - 1 - j]:
        j += 1
    return " ".join(s[i:len(s) - j]), " ".join(e[i:len(e) - j]), e[:i], e[len(e) - j:]


def run_vocabulary(pairs, counts: Counter | None = None) -> Counter:
    """Count every phrase the run's edits take out or put in (``changed_span``), from ``(source, edit)``
    prompt pairs: the answers the run itself asks about, which the landed check weighs each edit against."""
    counts = Counter() if counts is None else counts
    for source, edit in pairs:
        removed, inserted, _, _ = changed_span(source, edit)
        for phrase in (removed, inserted):
            if phrase:
                counts[phrase] += 1
    return counts


def rival_phrases(counts: Counter, extra: tuple[str, ...] = (), limit: int = MAX_RIVALS) -> tuple[str, ...]:
    """The run's rival phrases: the preset's own (``auto_rivals``) first, then the run's most frequent
    (ties alphabetical), at most ``limit``; deterministic for a manifest, whichever items are left to do."""
    ranked = list(dict.fromkeys([*extra, *(p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))]))
    return tuple(ranked[:limit])


def rival_prompts(source: str, edit: str, phrases: tuple[str, ...], limit: int = MAX_RIVALS) -> list[str]:
    """The edit prompt with what it puts in replaced by each rival phrase of as many words (not the edit's own
    phrase, nor the one it takes out: the source prompt stands for that), at most ``limit``: "would the judge
    rather say this image shows one of the other answers?"."""
    removed, inserted, head, tail = changed_span(source, edit)
    if not inserted:
        return []
    words = len(inserted.split())
    out = []
    for phrase in phrases:
        if phrase in (removed, inserted) or len(phrase.split()) != words:
            continue
        out.append(" ".join([*head, phrase, *tail]))
        if len(out) == limit:
            break
    return out
