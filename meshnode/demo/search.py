"""Web search for the demo: an MCP ``search`` tool when one is configured, otherwise a
small offline corpus shipped with the package.

:func:`search_offline` ranks the corpus (``data/corpus.json``) by TF-IDF-weighted word
overlap with the query; every hit it returns is labelled ``offline``.
:func:`normalize_mcp_results` turns whatever a ``search`` tool returned — structured
content ``{"results": [...]}`` or a list, or text holding the same as JSON — into the
same ``{title, url, snippet, source}`` shape, keeping at most ``limit`` results.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["MAX_RESULTS", "load_corpus", "normalize_mcp_results", "search_offline"]

MAX_RESULTS = 10
"""Most results a search returns."""
MAX_SNIPPET_CHARS = 600
"""Longest snippet kept per result."""

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    (
        *("a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have"),
        *("how", "in", "is", "it", "its", "of", "on", "or", "that", "the", "their", "them"),
        *("these", "they", "this", "to", "was", "were", "what", "which", "while", "who"),
        *("why", "with"),
    )
)


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1]


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "s", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


@cache
def load_corpus() -> tuple[dict[str, str], ...]:
    """The shipped corpus: ``({id, title, text, source}, ...)``."""
    raw = resources.files("meshnode.demo").joinpath("data/corpus.json").read_text("utf-8")
    return tuple(dict(doc) for doc in json.loads(raw)["documents"])


def search_offline(query: str, limit: int = 3) -> list[dict[str, Any]]:
    """The corpus documents most related to ``query`` (best first, ties by id)."""
    docs = load_corpus()
    terms = [_stem(w) for w in _words(query)]
    if not terms:
        return []
    doc_terms = [Counter(_stem(w) for w in _words(d["title"] + " " + d["text"])) for d in docs]
    n = len(docs)
    scored: list[tuple[float, str, dict[str, str]]] = []
    for doc, counts in zip(docs, doc_terms, strict=True):
        score = 0.0
        for term in set(terms):
            df = sum(1 for c in doc_terms if term in c)
            if counts[term]:
                score += (1 + math.log(counts[term])) * math.log(1 + n / df)
        if score > 0:
            scored.append((score, doc["id"], doc))
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [
        {
            "title": doc["title"],
            "url": None,
            "snippet": doc["text"][:MAX_SNIPPET_CHARS],
            "source": doc["source"],
            "score": round(score, 4),
            "offline": True,
        }
        for score, _, doc in scored[: max(1, min(limit, MAX_RESULTS))]
    ]


def _as_results(value: Any) -> list[Any] | None:
    if isinstance(value, dict):
        for key in ("results", "items", "hits", "result"):
            if key in value:
                return _as_results(value[key])
        return None
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            return _as_results(json.loads(value))
        except ValueError:
            return None
    return None


def normalize_mcp_results(
    structured: Any, texts: list[str], server: str, limit: int
) -> list[dict[str, Any]]:
    """Results of an MCP ``search`` call as ``{title, url, snippet, source}`` dicts."""
    items = _as_results(structured)
    if items is None:
        for text in texts:
            items = _as_results(text)
            if items is not None:
                break
    if items is None:
        items = [{"title": "search result", "snippet": t} for t in texts if t.strip()]
    out: list[dict[str, Any]] = []
    for item in items[: max(1, min(limit, MAX_RESULTS))]:
        if isinstance(item, str):
            item = {"snippet": item}
        if not isinstance(item, dict):
            continue
        title = str(item.get("title") or item.get("name") or "untitled")[:300]
        url = item.get("url") or item.get("link")
        snippet = str(item.get("snippet") or item.get("text") or item.get("content") or "")
        out.append(
            {
                "title": title,
                "url": str(url)[:2048] if url else None,
                "snippet": snippet[:MAX_SNIPPET_CHARS],
                "source": f"mcp:{server}",
                "offline": False,
            }
        )
    return out
