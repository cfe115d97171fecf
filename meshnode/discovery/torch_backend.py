"""The torch backend of MiniLM: sentence-transformers on torch, the reference pipeline.

Used where ONNX Runtime cannot run the model (see :data:`~meshnode.discovery.MINILM_BACKEND`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from meshnode.discovery.model import HF_OFFLINE_ENV, MINILM_DIM

__all__ = ["TorchBackend"]


class TorchBackend:
    """sentence-transformers on torch: the reference pipeline."""

    name = "torch"
    precision = "fp32"

    def __init__(self, path: Path, threads: int | None, batch_size: int) -> None:
        os.environ.update(HF_OFFLINE_ENV)
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self._model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._batch_size = batch_size
        dim: int | None
        if hasattr(self._model, "get_embedding_dimension"):
            dim = self._model.get_embedding_dimension()
        else:  # sentence-transformers before 5.x
            dim = self._model.get_sentence_embedding_dimension()
        if dim != MINILM_DIM:
            raise ValueError(f"{path} is not all-MiniLM-L6-v2: dimension {dim}")

    def encode(self, texts: list[str]) -> np.ndarray:
        matrix = self._model.encode(
            texts,
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(matrix, dtype=np.float32)
