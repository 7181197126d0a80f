"""One model's configuration: framework, source, weights, batching, replicas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deployments.config.base import _NAME, CpuAffinity, StrictModel


class BatchingConfig(StrictModel):
    max_batch_size: int = Field(default=8, ge=1, le=256)
    """Most requests in one batch."""

    max_batch_pixels: int = Field(default=8 * 512 * 512, ge=1)
    """Most input pixels (sum of width x height as the model sees them) in one batch."""

    batch_wait_timeout_s: float = Field(default=0.01, ge=0, le=10)
    """How long a batch waits for more requests after its first one arrives."""

    max_concurrent_batches: int = Field(default=1, ge=1, le=16)
    """Batches one replica runs at once (more than 1 only helps on a GPU)."""


class AutoscalingConfig(StrictModel):
    """Ray Serve autoscaling for one deployment (the fields of Ray Serve's
    ``AutoscalingConfig`` that segserve exposes). Replaces ``num_replicas``: Serve keeps the
    replica count between ``min_replicas`` and ``max_replicas`` so each replica has about
    ``target_ongoing_requests``.
    Replicas that do not fit on the cluster's nodes stay pending until a node with room joins
    (with the Ray autoscaler or KubeRay, such a node is started for them)."""

    min_replicas: int = Field(default=1, ge=0)
    """Fewest replicas, kept even without traffic (0 scales to zero: the next request waits
    for a replica to load)."""

    max_replicas: int = Field(default=1, ge=1)
    """Most replicas."""

    initial_replicas: int | None = Field(default=None, ge=0)
    """Replicas started at deploy time; by default ``min_replicas``."""

    target_ongoing_requests: float = Field(default=2.0, gt=0)
    """Requests (running + queued in the replica) each replica should have on average. For a
    batching model, about its batch size: lower scales out sooner, higher packs batches fuller."""

    upscale_delay_s: float = Field(default=30.0, ge=0)
    """How long the load must call for more replicas before they are added."""

    downscale_delay_s: float = Field(default=600.0, ge=0)
    """How long the load must call for fewer replicas before some are removed."""

    look_back_period_s: float = Field(default=30.0, gt=0)
    """Window over which request counts are averaged."""

    metrics_interval_s: float = Field(default=10.0, gt=0)
    """How often replicas and handles report request counts to the controller. Ray 2.60 marks
    it deprecated (in favour of ``RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S``) but still
    honours it; a scaling decision cannot come faster than this."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) is outside [min_replicas, max_replicas] "
                f"= [{self.min_replicas}, {self.max_replicas}]"
            )
        return self

    def ray_options(self) -> dict[str, Any]:
        """The ``autoscaling_config`` dict for ``Deployment.options``."""
        return self.model_dump(exclude_none=True)


def _replicas_or_autoscaling(num_replicas: int, autoscaling: AutoscalingConfig | None) -> None:
    if autoscaling is not None and num_replicas > 1:
        raise ValueError(
            f"autoscaling_config: cannot be combined with num_replicas: {num_replicas}; "
            "set min_replicas/max_replicas in autoscaling_config and drop num_replicas"
        )


def replica_options(num_replicas: int, autoscaling: AutoscalingConfig | None) -> dict[str, Any]:
    """``num_replicas`` or ``autoscaling_config`` for ``Deployment.options`` (never both)."""
    if autoscaling is None:
        return {"num_replicas": num_replicas}
    return {"autoscaling_config": autoscaling.ray_options()}


class ModelConfig(StrictModel):
    name: str
    """The model's name in the API (``model=<name>``): letters, digits, ``.``, ``_``, ``-``."""

    framework: Literal["hf_segformer", "mmseg", "paddleseg"]
    """Which adapter serves it."""

    source: str
    """hf_segformer: a HuggingFace hub id (``nvidia/segformer-b0-finetuned-ade-512-512``) or
    a local directory. mmseg: a config shipped with mmsegmentation (by name, e.g.
    ``segformer_mit-b0_8xb2-160k_ade20k-512x512``) or a config file path. paddleseg: a
    PaddleSeg config file (``.yml``), a PaddleSeg model class (``PPLiteSeg``) whose arguments
    are ``config_options.model``, or an exported inference model (``paddle.jit.save``
    output: a directory or path prefix)."""

    checkpoint: str | None = None
    """mmseg: checkpoint path or URL; by default the model zoo's URL for a shipped config.
    paddleseg: a ``.pdparams`` path or URL."""

    config_options: dict[str, Any] = Field(default_factory=dict)
    """mmseg: overrides merged into the config (mmengine ``merge_from_dict`` keys).
    paddleseg: a PaddleSeg config dict merged over the source's (``model``,
    ``val_dataset.transforms``, ``test_config``)."""

    weights: Literal["pretrained", "random", "auto"] = "auto"
    """``pretrained``: load the source's weights or fail; ``random``: build the architecture
    with random weights; ``auto``: pretrained when reachable, else random with a warning."""

    architecture: str | None = None
    """Variant to build when weights are random and the source has no config (``b0``..``b5``);
    by default read from the source name."""

    labels: Literal["ade20k", "cityscapes"] | None = None
    """Label set for random weights when the source has no config; by default from the name."""

    seed: int = 0
    """Seed for random weights, so every replica of a random model answers alike."""

    quality: float | None = Field(default=None, ge=0, le=100)
    """Accuracy figure used to rank models for ``model=auto`` with a budget (e.g. ADE20K
    mIoU); a model without one, or whose labels differ from the default model's, is never
    picked by budget."""

    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """``auto``: bf16 (or fp16) autocast on CUDA, fp32 on CPU."""

    compile: bool = False
    """``torch.compile`` the model's forward pass (hf_segformer), compiled by the warm-up at
    replica start: a slow start (SegFormer-B0 on 2 CPU cores: about 2 minutes cold, seconds
    from the cache below), then faster batches. Off by default: ``benchmarks/forward_modes.py``
    measures the gain on your hardware."""

    compile_cache_dir: str | None = None
    """With ``compile``: where Inductor keeps compiled graphs (``TORCHINDUCTOR_CACHE_DIR``), so
    a restarted replica loads them instead of compiling again. By default PyTorch's (under
    the system temp directory, lost with a container): point it at a persistent volume."""

    cpu_threads: int | None = Field(default=None, ge=1, le=256)
    """Torch threads on CPU; by default the CPUs in ``cpu_affinity`` when it is set, else
    the CPUs Ray gave the replica (rounded up). At most ``len(cpu_affinity)``."""

    cpu_affinity: CpuAffinity | None = None
    """CPU ids (as the node numbers them) each replica pins its process to at start
    (Linux ``sched_setaffinity``; elsewhere logged and ignored), e.g. ``[0]`` to give a model
    a core of its own on a CPU-only machine. Ids the node does not let the replica use are
    logged as an error and dropped; with none left the replica runs unpinned (it starts
    either way, so a wrong id never crash-loops a deployment). Ray's ``num_cpus`` is
    bookkeeping only; this is what keeps models off each other's cores. Default: unpinned."""

    retain_freed_memory: bool = True
    """Linux (glibc): the replica's process allocates from one heap and keeps what it frees
    for the next batch (``MALLOC_ARENA_MAX=1``, ``MALLOC_MMAP_MAX_=0``, no trimming), instead
    of mapping fresh, zeroed pages from the kernel for every large tensor of every batch.
    SegFormer-B0 on 2 CPU cores: about 1.4x the images/s (``benchmarks/heap.py``). The
    cost: the process keeps its peak memory (bounded by ``batching``) until it exits. The
    allocator PyTorch's tuning guide suggests (jemalloc, tcmalloc) does the same; set false
    when you preload one of those. Elsewhere ignored."""

    label_max_pixels: int = Field(default=512 * 512, ge=1024)
    """Resolution bound for the arg-max: logits are upsampled to the original size only up
    to this many pixels; larger originals get a nearest-neighbour upscale of the label map."""

    batching: BatchingConfig = BatchingConfig()
    """Request batching in the replica."""

    warmup_batches: int = Field(default=2, ge=0, le=16)
    """Batches (of 1, 2, ... images) timed at replica start to seed the latency model."""

    num_replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs reserved per replica in Ray."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs per replica in Ray (fractional shares allowed)."""

    max_ongoing_requests: int = Field(default=32, ge=1)
    """Requests a replica accepts at once (what it can batch from)."""

    max_queued_requests: int = Field(default=256, ge=-1)
    """Requests waiting for a replica before new ones get 503; -1 is unbounded."""

    autoscaling_config: AutoscalingConfig | None = None
    """Scale replicas with load between min_replicas and max_replicas (instead of
    ``num_replicas``)."""

    @model_validator(mode="after")
    def _scaling(self) -> ModelConfig:
        _replicas_or_autoscaling(self.num_replicas, self.autoscaling_config)
        affinity, threads = self.cpu_affinity, self.cpu_threads
        if affinity is not None and threads is not None and threads > len(affinity):
            raise ValueError(
                f"cpu_threads ({threads}) is more than the CPUs in cpu_affinity "
                f"({len(affinity)}): the threads would contend for them"
            )
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if value == "auto" or not _NAME.match(value):
            raise ValueError(
                "model names use letters, digits, '.', '_' and '-' (at most 63) and are not 'auto'"
            )
        return value
