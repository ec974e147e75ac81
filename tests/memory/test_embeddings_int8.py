"""The embedding model multiplying in int8 (memory/onnx_int8.py): per-text vectors close to the
float ones, and clear errors for what it cannot rewrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from memory.embeddings import Embedder, install_model
from memory.onnx_int8 import int8_activations

SET = Path(__file__).parent / "data" / "recall_multisession.json"
TEXTS = [
    "ok",
    "Caroline: my sister's recital went better than I hoped, she got a standing ovation!",
    "Ünïcödé — 日本語 and an emoji 🎹 in one turn",
    "word " * 400,
]


def test_an_int8_vector_depends_on_its_text_alone(embedding_model_dir: Path) -> None:
    others = [f"turn {i}: {'we talked about the weather ' * (i % 7)}and work" for i in range(40)]
    batched = Embedder(embedding_model_dir, threads=3, batch_size=8).embed_sync(others + TEXTS)
    alone = Embedder(embedding_model_dir, threads=1)
    for i, text in enumerate(TEXTS):
        assert np.array_equal(alone.embed_sync([text])[0], batched[len(others) + i])


def test_int8_vectors_stay_close_to_the_float_ones(embedding_model_dir: Path) -> None:
    turns = json.loads(SET.read_text(encoding="utf-8"))["turns"]
    sample = list(dict.fromkeys(t["text"] for t in turns))[::4] + TEXTS
    fast = Embedder(embedding_model_dir).embed_sync(sample)
    exact = Embedder(embedding_model_dir, int8=False).embed_sync(sample)
    cosines = (fast * exact).sum(axis=1)
    assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert cosines.mean() > 0.995 and cosines.min() > 0.98  # the worst: "ok", three tokens


def test_the_rewrite_multiplies_the_36_weight_matrices_in_integers(
    embedding_model_dir: Path,
) -> None:
    model = (embedding_model_dir / "model.onnx").read_bytes()
    rewritten = int8_activations(model)
    assert rewritten.count(b"MatMulIntegerToFloat") == 36
    assert len(rewritten) - len(model) < 200_000  # the int8 weights are shared, not expanded


def test_what_cannot_be_rewritten_is_a_clear_error(embedding_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="Not an ONNX model"):
        int8_activations(b"\xff\xff\xff not protobuf")
    once = int8_activations((embedding_model_dir / "model.onnx").read_bytes())
    with pytest.raises(ValueError, match="no product with int8 weights"):
        int8_activations(once)


def test_a_damaged_model_file_fails_clearly_at_load(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    install_model(folder)
    (folder / "model.onnx").write_bytes(b"\x00 not the model")
    with pytest.raises(ValueError, match="Not an ONNX model"):
        Embedder(folder).load()
