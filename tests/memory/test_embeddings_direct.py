"""The embedder on ONNX Runtime directly: fastembed's vectors in float32, each distinct text
embedded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fastembed import TextEmbedding

from memory.embeddings import MAX_LENGTH, MODEL_NAME, Embedder, load_tokenizer

TEXTS = [
    "I live in Paris.",
    "ok",
    "Caroline: my sister's recital went better than I hoped, she got a standing ovation!",
    "Ünïcödé — 日本語 and an emoji 🎹 in one turn",
    "",
    "word " * 400,  # past the 256-token limit: truncated
]


@pytest.mark.parametrize(("threads", "batch_size"), [(1, 32), (2, 2), (3, 1)])
def test_the_vectors_are_fastembeds(
    embedding_model_dir: Path, threads: int, batch_size: int
) -> None:
    reference = TextEmbedding(MODEL_NAME, specific_model_path=str(embedding_model_dir), threads=1)
    expected = np.asarray(list(reference.embed(TEXTS, batch_size=4)), dtype=np.float32)
    ours = Embedder(embedding_model_dir, threads=threads, batch_size=batch_size, int8=False)
    assert np.allclose(ours.embed_sync(TEXTS), expected, atol=1e-6)


def test_texts_are_cut_at_the_models_limit_and_never_padded(embedding_model_dir: Path) -> None:
    tokenizer = load_tokenizer(embedding_model_dir)
    assert len(tokenizer.encode("word " * 400).ids) == MAX_LENGTH
    assert len(tokenizer.encode("ok").ids) == 3  # [CLS] ok [SEP], not the file's fixed 128


def test_each_distinct_text_is_embedded_once_and_every_caller_gets_its_row(
    embedding_model_dir: Path,
) -> None:
    embedder = Embedder(embedding_model_dir, threads=1)
    embedder.load()
    session = embedder._sessions[0]
    original = session.embed
    embedded: list[int] = []

    def counting(tokens: list[list[int]]) -> npt.NDArray[np.float32]:
        embedded.append(len(tokens))
        return original(tokens)

    session.embed = counting  # type: ignore[method-assign]
    texts = ["thanks!", "ok", "thanks!", "see you tomorrow", "ok", "thanks!"]
    vectors = embedder.embed_sync(texts)
    assert sum(embedded) == 3
    alone = [embedder.embed_sync([text])[0] for text in texts]
    assert np.allclose(vectors, np.stack(alone), atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-2)
