"""Settings of the inference package: the ``IAMINE_INFERENCE__*`` group of the hub's settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class InferenceSettings(BaseModel):
    """Worker links, job limits and the hub's local worker."""

    heartbeat_interval_s: float = Field(
        10.0, gt=0, description="Seconds between heartbeats, both ways, on a worker link."
    )
    heartbeat_misses: int = Field(
        3, ge=1, description="Missed heartbeat intervals after which a silent worker is dropped."
    )
    hello_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a new worker link has to send its `hello`."
    )
    max_bad_frames: int = Field(
        20, ge=1, description="Malformed or unexpected frames a worker may send before it is cut."
    )
    job_deadline_s: float = Field(
        300.0, gt=0, description="Seconds a job may run on a worker (sent to it with the job)."
    )
    stall_timeout_s: float = Field(
        30.0, gt=0, description="Seconds of silence mid-answer after which a worker is stalled."
    )
    failovers: int = Field(
        2, ge=0, description="Times an answer may move to another worker after output began."
    )
    first_token_timeout_s: float = Field(
        120.0, gt=0, description="Seconds to wait for a worker's first frame of a job."
    )
    cancel_grace_s: float = Field(
        10.0, gt=0, description="Seconds a cancelled job keeps its slot while the worker stops it."
    )
    job_attempts: int = Field(
        2, ge=1, description="Workers tried for a job that fails before producing any output."
    )
    trust_sync_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between reads of connected workers' trust levels, so a change made "
        "elsewhere (the CLI, another process) reaches their links.",
    )
    model_memory_s: float = Field(
        600.0,
        ge=0,
        description="Seconds a model stays known after its last worker left: its requests wait "
        "for a worker to return (then get a degraded answer) instead of a 404.",
    )
    queue_notice_s: float = Field(
        5.0, gt=0, description="Seconds between SSE comments sent to a stream waiting in the queue."
    )
    max_frame_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest WebSocket message a worker may send; a bigger one cuts it off.",
    )
    max_hello_bytes: int = Field(
        64 << 10, ge=1024, description="Largest `hello` frame, checked before authentication."
    )
    local_worker: bool = Field(
        True, description="`iamine serve` starts a worker process on the local model."
    )
    local_worker_model: Path | None = Field(
        None, description="GGUF file for the local worker (default: the bundled SmolLM2-135M)."
    )
    local_worker_slots: int = Field(1, ge=1, description="Parallel jobs of the local worker.")
    local_worker_threads: int | None = Field(
        None, ge=1, description="CPU threads of the local worker's llama.cpp (default: all cores)."
    )
    local_worker_context: int | None = Field(
        None,
        ge=256,
        description="Context size (tokens) of the local worker (default: the model's trained one).",
    )
