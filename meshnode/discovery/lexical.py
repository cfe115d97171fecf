"""The lexical index: BM25 over capability names, descriptions, tags and examples.

Theory of operation
-------------------
Dense embeddings find paraphrases; they are weak on rare exact words (a product name, a
file format, an acronym) that a user types and a capability spells out. This index scores
those: every capability is one document, identified by ``(node_id, capability name)``,
made of its name split on ``_ . : -`` (counted :data:`NAME_REPEAT` times, since a name is
the capability's most deliberate words), its description, its tags and its examples.

Terms. Text is lower-cased and split on anything that is not a letter or a digit; stop
words (:data:`STOP_WORDS`) are dropped and each word is reduced by :func:`stem`, a few
suffix rules ("invoices" → "invoic", "converting" → "convert", "converted" → "convert")
so that the inflections a query and a description use meet. Documents and queries go
through the same :func:`terms`.

Score. Okapi BM25 with ``k1`` = :data:`BM25_K1` and ``b`` = :data:`BM25_B`::

    bm25(q, d) = Σ_{t ∈ q} idf(t) · tf · (k1 + 1) / (tf + k1 · (1 − b + b · |d| / avgdl))
    idf(t)     = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

and :meth:`LexicalIndex.search` also gives it normalised to [0, 1]:
``min(1, bm25 / Σ_{t ∈ q} idf(t))`` (``tf`` is ``t``'s count in ``d``): 1.0 when the
document holds every query term (once, at average length), less for a part of the query,
weighted by how rare each part is.

Bounds. The index holds at most ``max_documents`` documents (the capability index's own
limit: it is kept in step with it, entry for entry); a document is built from one
capability, so it is bounded by the manifest's limits (a few thousand characters). A query
keeps its first :data:`MAX_QUERY_TERMS` distinct terms. A search walks the postings of
those terms, rarest first, and skips a term whose postings would take the total past
:data:`MAX_POSTINGS_PER_QUERY`: the terms skipped are the most common ones, worth the
least, and they still count in the normalisation, so a search costs at most that many
steps however large the index (a word in every one of 320,000 documents would otherwise
cost about 0.2 s).

Not thread-safe on its own: :class:`~meshnode.discovery.CapabilityIndex` calls it under
its lock.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable

from protocol.manifest import Capability

__all__ = [
    "BM25_B",
    "BM25_K1",
    "MAX_POSTINGS_PER_QUERY",
    "MAX_QUERY_TERMS",
    "NAME_REPEAT",
    "STOP_WORDS",
    "LexicalIndex",
    "capability_terms",
    "stem",
    "terms",
]

BM25_K1 = 1.2
"""BM25 term-frequency saturation: a term's second occurrence adds less than its first,
its tenth almost nothing. 1.2 is the textbook value; capability texts are short, so
little depends on it."""

BM25_B = 0.75
"""BM25 length normalisation (0: none, 1: full): a long description that matches a word
scores a little lower than a short one. 0.75 is the textbook value."""

NAME_REPEAT = 2
"""How many times a capability's name words count in its document: the name is chosen
with care and short, so a query word that matches it says more than one in a long
description."""

MAX_QUERY_TERMS = 64
"""Most distinct terms of one query that are scored (the first ones): a search walks the
postings of each, so this bounds its cost whatever the query's length."""

MAX_POSTINGS_PER_QUERY = 20_000
"""Most postings (term, document) one search walks. Measured on 320,000 documents of 30
terms: 20,000 postings take about 15 ms in CPython; eight common terms unbounded took
630 ms. A term in fewer than this many documents is always scored if it comes first, and
on the 209-capability retrieval set no term comes near it."""

_STOP_WORDS_TEXT = """
a about all also am an and any are as at be been between but by can could do does each
every find for from get give go goes has have here how i if in into is it its just let
like make many me more most much my need next now of off on only or our out over please
right s should show so some still t take tell that the their them then there these this
those to too two up us use very want was we what when where which who will with would
you your
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
"""Words that say nothing about which capability is meant (function words, and the
generic verbs of a request: "find", "make", "show"); they are not terms."""

_WORD = re.compile(r"[^\W_]+")

# Suffix rules, longest first: (suffix, replacement, shortest stem left).
_SUFFIXES: tuple[tuple[str, str, int], ...] = (
    ("ational", "ate", 3),
    ("ization", "ize", 3),
    ("ations", "ate", 3),
    ("ation", "ate", 3),
    ("ings", "", 3),
    ("ing", "", 3),
    ("ies", "y", 2),
    ("ied", "y", 2),
    ("ers", "", 3),
    ("er", "", 3),
    ("ed", "", 3),
    ("es", "", 3),
    ("ly", "", 3),
    ("s", "", 3),
)


def stem(word: str) -> str:
    """A light stem of a lower-case ``word``: the first matching suffix rule, if the stem
    left is long enough; ``ss`` endings are kept ("address", "class")."""
    if word.endswith("ss") or not word.isalpha():
        return word
    for suffix, replacement, shortest in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= shortest:
            stemmed = word[: len(word) - len(suffix)] + replacement
            if stemmed.endswith("e") and len(stemmed) > 4:
                stemmed = stemmed[:-1]  # "translate"/"translated" → "translat"
            return stemmed
    if word.endswith("e") and len(word) > 4:
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """The terms of ``text``: lower-cased words, stop words dropped, stemmed."""
    return [stem(word) for word in _WORD.findall(text.lower()) if word not in STOP_WORDS]


def capability_terms(capability: Capability) -> list[str]:
    """The document of ``capability``: its name's words (:data:`NAME_REPEAT` times), its
    description, its tags and its examples."""
    name_terms = terms(capability.name)
    out = name_terms * NAME_REPEAT
    out += terms(capability.description)
    for tag in capability.tags:
        out += terms(tag)
    for example in capability.examples:
        out += terms(example)
    return out


class LexicalIndex:
    """BM25 over documents of terms, keyed by any hashable key (the capability index
    uses ``(node_id, capability name)``)."""

    def __init__(
        self, *, k1: float = BM25_K1, b: float = BM25_B, max_documents: int | None = None
    ) -> None:
        if not k1 >= 0.0 or not 0.0 <= b <= 1.0:
            raise ValueError(f"need k1 >= 0 and b in [0, 1], got k1={k1!r}, b={b!r}")
        if max_documents is not None and max_documents < 1:
            raise ValueError("max_documents must be >= 1")
        self._k1 = k1
        self._b = b
        self._max_documents = max_documents
        self._postings: dict[str, dict[Hashable, int]] = {}
        self._lengths: dict[Hashable, int] = {}
        self._doc_terms: dict[Hashable, tuple[str, ...]] = {}
        self._seq: dict[Hashable, int] = {}
        self._next_seq = 0
        self._total_length = 0

    def __len__(self) -> int:
        return len(self._lengths)

    def __contains__(self, key: object) -> bool:
        return key in self._lengths

    @property
    def vocabulary(self) -> int:
        """Distinct terms held."""
        return len(self._postings)

    def add(self, key: Hashable, document: Iterable[str]) -> None:
        """Index ``document`` (its terms) under ``key``, replacing what ``key`` had."""
        limit = self._max_documents
        if key not in self._lengths and limit is not None and len(self._lengths) >= limit:
            raise ValueError(f"the lexical index is full ({limit} documents)")
        self.remove(key)
        counts = Counter(document)
        for term, count in counts.items():
            self._postings.setdefault(term, {})[key] = count
        length = sum(counts.values())
        self._lengths[key] = length
        self._doc_terms[key] = tuple(counts)
        self._seq[key] = self._next_seq
        self._next_seq += 1
        self._total_length += length

    def remove(self, key: Hashable) -> bool:
        """Forget ``key``'s document; True if there was one."""
        length = self._lengths.pop(key, None)
        if length is None:
            return False
        self._total_length -= length
        del self._seq[key]
        for term in self._doc_terms.pop(key):
            docs = self._postings[term]
            del docs[key]
            if not docs:
                del self._postings[term]
        return True

    def idf(self, term: str) -> float:
        """``ln(1 + (N − df + 0.5) / (df + 0.5))``: high for rare terms, near 0 for a term
        in every document, never negative."""
        df = len(self._postings.get(term, ()))
        n = len(self._lengths)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def search(
        self, query: str, k: int, *, keys: Iterable[Hashable] | None = None
    ) -> list[tuple[Hashable, float, float]]:
        """The ``k`` best documents for ``query``: ``(key, bm25, normalised)`` best first,
        equal scores in the order the documents were added; only documents sharing a term
        with the query. ``keys`` restricts the search to those documents."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        query_terms = list(dict.fromkeys(terms(query)))[:MAX_QUERY_TERMS]
        n = len(self._lengths)
        if not query_terms or n == 0:
            return []
        allowed = None if keys is None else set(keys)
        avgdl = self._total_length / n if self._total_length else 1.0
        k1, b = self._k1, self._b
        scores: dict[Hashable, float] = {}
        idf_total = 0.0
        budget = MAX_POSTINGS_PER_QUERY
        by_rarity = sorted(query_terms, key=lambda t: len(self._postings.get(t, ())))
        for term in by_rarity:
            idf = self.idf(term)
            idf_total += idf
            postings = self._postings.get(term, {})
            if len(postings) > budget:
                continue  # too common to be worth its cost; see MAX_POSTINGS_PER_QUERY
            budget -= len(postings)
            for key, tf in postings.items():
                if allowed is not None and key not in allowed:
                    continue
                norm = k1 * (1.0 - b + b * self._lengths[key] / avgdl)
                scores[key] = scores.get(key, 0.0) + idf * tf * (k1 + 1.0) / (tf + norm)
        if not scores or idf_total <= 0.0:
            return []
        seq = self._seq
        best = heapq.nsmallest(k, scores.items(), key=lambda kv: (-kv[1], seq[kv[0]]))
        return [(key, score, min(1.0, score / idf_total)) for key, score in best]
