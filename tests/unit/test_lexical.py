"""The lexical index: terms, BM25 against hand-computed values, bounds, and keeping in
step with the capability index."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meshnode.discovery import CapabilityIndex, HashingEmbedder, IndexEntry, LexicalIndex
from meshnode.discovery.index import capability_text
from meshnode.discovery.lexical import (
    BM25_B,
    BM25_K1,
    MAX_POSTINGS_PER_QUERY,
    MAX_QUERY_TERMS,
    NAME_REPEAT,
    capability_terms,
    stem,
    terms,
)
from protocol.manifest import Capability


@pytest.mark.parametrize(
    ("word", "stemmed"),
    [
        ("invoices", "invoic"),
        ("invoice", "invoic"),
        ("converting", "convert"),
        ("converted", "convert"),
        ("translation", "translat"),
        ("translate", "translat"),
        ("cities", "city"),
        ("address", "address"),
        ("pdf", "pdf"),
        ("mp3", "mp3"),
        ("is", "is"),
    ],
)
def test_stem(word: str, stemmed: str) -> None:
    """Inflections of one word meet; short words, ``ss`` endings and words with digits
    are left alone."""
    assert stem(word) == stemmed


def test_terms_split_names_and_drop_stop_words() -> None:
    """Names split on ``_ . : -``; case folded; stop words and a request's generic verbs
    dropped."""
    assert terms("generate_invoice.v2-PDF") == ["generat", "invoic", "v2", "pdf"]
    assert terms("Please find me the invoices") == ["invoic"]
    assert terms("") == []


def test_capability_document_weights_the_name() -> None:
    """The name counts NAME_REPEAT times; description, tags and examples once each."""
    cap = Capability(
        name="hash_file",
        description="Checksums of a download",
        tags=("security",),
        examples=("sha256 of an ISO",),
    )
    document = capability_terms(cap)
    assert document.count("hash") == NAME_REPEAT
    assert {"checksum", "download", "security", "sha256", "iso"} <= set(document)


def bm25(tf: int, df: int, n: int, length: int, avgdl: float) -> float:
    """One term's BM25 contribution, written out from the formula."""
    idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
    return idf * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / avgdl))


# Documents of terms (already tokenised), and for each query the expected BM25 of every
# matching document, computed with the formula above.
DOCS = {
    "a": ["invoic", "pdf", "pdf"],
    "b": ["invoic", "email"],
    "c": ["weather", "forecast", "rain", "wind"],
}
AVGDL = 9 / 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("pdf", {"a": bm25(2, 1, 3, 3, AVGDL)}),
        ("invoice", {"a": bm25(1, 2, 3, 3, AVGDL), "b": bm25(1, 2, 3, 2, AVGDL)}),
        (
            "invoice pdf",
            {"a": bm25(1, 2, 3, 3, AVGDL) + bm25(2, 1, 3, 3, AVGDL), "b": bm25(1, 2, 3, 2, AVGDL)},
        ),
        ("rain and wind", {"c": bm25(1, 1, 3, 4, AVGDL) * 2}),
        ("the of", {}),
        ("quantum", {}),
    ],
)
def test_bm25_table(query: str, expected: dict[str, float]) -> None:
    """Scores equal the written-out formula; only documents sharing a term come back,
    best first; the normalised score is bm25 over the query's summed idf, at most 1."""
    index = LexicalIndex()
    for key, document in DOCS.items():
        index.add(key, document)
    found = index.search(query, 10)
    assert {key: score for key, score, _ in found} == pytest.approx(expected)
    assert [score for _, score, _ in found] == sorted(expected.values(), reverse=True)
    idf_total = sum(index.idf(t) for t in dict.fromkeys(terms(query)))
    for _, score, normalised in found:
        assert normalised == pytest.approx(min(1.0, score / idf_total))
        assert 0.0 < normalised <= 1.0


def test_rare_term_outweighs_common_one() -> None:
    """A term in one document counts more than a term in all of them."""
    index = LexicalIndex()
    for i in range(10):
        index.add(i, ["convert", "file"] + (["markdown"] if i == 7 else []))
    assert index.idf("markdown") > index.idf("convert")
    assert index.search("convert file to markdown", 1)[0][0] == 7


def test_add_replaces_and_remove_forgets() -> None:
    """Re-adding a key replaces its document; removal drops its postings and terms no
    other document has; ties come in the order documents were added."""
    index = LexicalIndex()
    index.add("x", ["alpha"])
    index.add("y", ["alpha"])
    assert [k for k, _, _ in index.search("alpha", 5)] == ["x", "y"]
    index.add("x", ["beta"])
    assert [k for k, _, _ in index.search("alpha", 5)] == ["y"]
    assert index.remove("y") and not index.remove("y")
    assert index.search("alpha", 5) == []
    assert len(index) == 1 and index.vocabulary == 1


def test_bounds() -> None:
    """A full index refuses a new key (a known key may still be replaced); k must be
    positive; a long query is cut to MAX_QUERY_TERMS distinct terms; ``keys``
    restricts the search."""
    index = LexicalIndex(max_documents=2)
    index.add(1, ["a1"])
    index.add(2, ["a2"])
    with pytest.raises(ValueError, match="full"):
        index.add(3, ["a3"])
    index.add(2, ["a2", "a3"])
    with pytest.raises(ValueError):
        index.search("a1", 0)
    assert index.search("a1 a2", 5, keys=[2])[0][0] == 2
    long_query = " ".join(f"w{i}" for i in range(MAX_QUERY_TERMS)) + " a1"
    assert index.search(long_query, 5) == []  # a1 is term 65: not scored
    with pytest.raises(ValueError):
        LexicalIndex(b=1.5)


def test_capability_index_keeps_words_in_step() -> None:
    """The capability index's lexical side follows upserts and removals: a replaced
    manifest's old words find nothing, a removed node's words find nothing, and a word
    found only lexically comes back with its exact cosine."""
    embedder = HashingEmbedder()
    index = CapabilityIndex(embedder.model_id, embedder.dim)

    def upsert(node: str, *caps: Capability) -> None:
        entries = [IndexEntry(node, c, capability_text(c)) for c in caps]
        index.upsert(node, entries, embedder.embed([e.text for e in entries]), embedder.model_id)

    upsert("n1", Capability(name="zorblax_render", description="Render zorblax scenes"))
    upsert("n2", Capability(name="weather", description="Forecast rain"))
    query = "zorblax"
    vector = embedder.embed([query])
    hits = index.hybrid_search(vector, query, 1, embedder.model_id)
    by_name = {h.entry.name: h for h in hits}
    assert by_name["zorblax_render"].lexical > 0.5
    stored = embedder.embed([capability_text(by_name["zorblax_render"].entry.capability)])[0]
    assert by_name["zorblax_render"].similarity == pytest.approx(float(stored @ vector[0]))
    upsert("n1", Capability(name="paint", description="Paint walls"))
    assert all(h.lexical == 0.0 for h in index.hybrid_search(vector, query, 5, embedder.model_id))
    index.remove_node("n2")
    rain = index.hybrid_search(embedder.embed(["rain"]), "rain", 5, embedder.model_id)
    assert [h.entry.name for h in rain] == ["paint"] and rain[0].lexical == 0.0
    named = index.hybrid_search(vector, "paint", 5, embedder.model_id, name="weather")
    assert named == []
    assert np.isfinite([h.similarity for h in rain]).all()


def test_a_search_walks_at_most_the_postings_budget() -> None:
    """A term in more documents than MAX_POSTINGS_PER_QUERY is skipped (rarer terms are
    walked first and still scored), but still counts in the normalisation: the cost of a
    query is bounded however common its words.

    On the code without the budget: ``search("common", 10)`` walked all 20,002 postings
    and returned 10 documents."""
    index = LexicalIndex()
    for i in range(MAX_POSTINGS_PER_QUERY + 1):
        index.add(i, ["common"])
    index.add("rare-doc", ["common", "zorblax"])
    found = index.search("common zorblax", 10)
    assert [key for key, _, _ in found] == ["rare-doc"]
    assert 0.0 < found[0][2] < 1.0
    assert index.search("common", 10) == []


def test_repeating_a_word_buys_little() -> None:
    """A document stuffed with a query word 50 times scores less than k1 + 1 times one
    that holds it once at the average length (BM25 saturation, and the stuffing makes
    the document long), and its normalised score is capped at 1, where a document that
    holds the word once already is: in the relevance the router uses, stuffing buys
    nothing over an honest mention (words add at most LEXICAL_WEIGHT either way)."""
    index = LexicalIndex()
    index.add("honest", ["translat", "text", "languag"])
    index.add("stuffer", ["translat"] * 50)
    for i in range(20):
        index.add(i, [f"other{i}", "text", "languag"])
    scores = {key: (raw, normalised) for key, raw, normalised in index.search("translate", 5)}
    assert scores["stuffer"][0] < (BM25_K1 + 1) * scores["honest"][0]
    assert scores["stuffer"][1] == scores["honest"][1] == 1.0
