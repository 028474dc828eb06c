"""Data parallelism on PyTorch's own engine: ``torch.distributed`` as ``torchrun`` launches it.

One process per device; ``torchrun --nproc-per-node N`` (or ``accelerate launch``, which drives the
same engine) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``,
and :func:`init` joins the process group they describe. Without them (or with ``WORLD_SIZE=1``)
nothing is initialised and every helper here acts as the identity of a single process, so the
training loops call them unconditionally.

The rules every loop follows:

* **Backend**: NCCL for CUDA tensors and gloo for CPU ones (``"cpu:gloo,cuda:nccl"``) where CUDA
  is available, gloo alone elsewhere; ``RECGYM_DIST_BACKEND`` overrides. Each rank runs on
  ``cuda:LOCAL_RANK``.
* **Seeds** (:func:`rank_seed`): everything that defines the *global* batch (model initialisation,
  data order, which requests a step trains on, the evaluation sample) uses the run's ``seed`` on
  every rank, so all ranks agree on it without communicating. What a rank draws for itself alone
  (its rollouts) uses ``rank_seed(base, rank)``: rank 0 keeps ``base`` (a one-process run is
  unchanged) and rank r > 0 draws from ``SeedSequence([base, r])``.
* **Sharding**: a global batch is cut into contiguous shards in rank order (:func:`shard_slice`),
  so the global batch is exactly one process's and concatenating the shards in rank order gives it
  back. RL minibatches are cut first and then sharded (:func:`minibatch_shards`), so the global
  minibatch j is one process's minibatch j. Evaluation shards whole batches of requests, so every
  request is scored in the very batch one process would score it in.
* **Losses** are each rank's share of the global batch's loss: within :func:`loss_sync`,
  :func:`global_sum` and :func:`global_cat` make token means, per-sequence means, SimPO's pair
  mean and KL-Cov's top-k run over the global batch; gradients are then **summed** over ranks
  (:func:`sum_gradients`), which gives exactly the gradient of the global loss, and clipped by its
  global norm (:func:`clip_grad_norm`). With FSDP (:mod:`agents.parallel.fsdp`) the decoder blocks'
  gradients are sharded ``DTensor`` s that FSDP itself sums over ranks; the rest stay replicated.
* **Failure**: :func:`agree` is a sync point: if the code in it raises on any rank, every rank
  raises (the failing one its own error, the others a :class:`DistributedError` naming the rank and
  its message), instead of the others waiting forever. Outside sync points a rank that fails
  :func:`abort` s its process group, so its peers' next collective fails at once (gloo) and
  ``torchrun`` stops the job; collectives time out after ``RECGYM_DIST_TIMEOUT`` seconds (default
  1,800) whatever happens, and a collective that fails raises :class:`DistributedError` saying so.
* **Files**: rank 0 alone writes logs, checkpoints and results (:func:`is_main`); every rank
  reads the checkpoint when it resumes, so the run folder must be on a filesystem all nodes see.

Example:
    >>> world = init()                    # a single process here: no process group
    >>> world.world_size, is_main(), shard_slice(10)
    (1, True, slice(0, 10, None))
"""

from __future__ import annotations

import datetime
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

TIMEOUT_ENV = "RECGYM_DIST_TIMEOUT"
BACKEND_ENV = "RECGYM_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 1800.0
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BUCKET_ELEMENTS = 1 << 24  # gradients are summed in flat buckets of at most this many elements


class DistributedError(RuntimeError):
    """Another rank failed, or a collective could not complete; the message says which and what to do.

    Example:
        >>> issubclass(DistributedError, RuntimeError)
        True
    """


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``world_size``, its local rank and device.

    Example:
        >>> World(0, 1, 0, None, torch.device("cpu")).distributed
        False
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether several processes take part (a process group is initialised)."""
        return self.world_size > 1


# -- the process group ---------------------------------------------------------------------------


def launch_env(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, or None for a single process.

    Partial or inconsistent variables are an error naming them.

    Example:
        >>> launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
        ...             "MASTER_PORT": "29500"})
        (1, 2, 1)
        >>> launch_env({}) is None
        True
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return None
    try:
        world_size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"torchrun's RANK, WORLD_SIZE, LOCAL_RANK must be integers ({err})") from err
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}: need "
                         "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0 (launch with torchrun)")
    if world_size > 1:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not env.get(v)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world_size} but {missing} are not set: launch with torchrun "
                             "(torchrun --nproc-per-node N ...), which sets them")
    return rank, world_size, local_rank


def default_backend() -> str:
    """``RECGYM_DIST_BACKEND``, else NCCL for CUDA tensors + gloo for CPU tensors where CUDA is
    available, else gloo.

    Example:
        >>> default_backend() in ("gloo", "cpu:gloo,cuda:nccl") or BACKEND_ENV in os.environ
        True
    """
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def timeout_seconds() -> float:
    """The process group's timeout: ``RECGYM_DIST_TIMEOUT`` seconds, 1,800 by default.

    Example:
        >>> timeout_seconds() > 0
        True
    """
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: must be a number of seconds > 0")
    return value


def init(backend: str | None = None, timeout_s: float | None = None) -> World:
    """Join the process group torchrun describes (idempotent); a single process when not launched so.

    On CUDA, rank r runs on ``cuda:LOCAL_RANK`` (``torch.cuda.set_device``), so ``"cuda"`` means
    this rank's GPU everywhere else. ``timeout_s`` (default :func:`timeout_seconds`) bounds every
    collective: a rank that waits longer for its peers raises instead of hanging.

    Example:
        >>> init().world_size   # not launched by torchrun here
        1
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    launched = launch_env()
    if launched is None or launched[1] == 1:
        return world()
    rank, world_size, local_rank = launched
    backend = backend or default_backend()
    if "nccl" in backend and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs: "
                             "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else timeout_seconds())
    dist.init_process_group(backend=backend, timeout=timeout, rank=rank, world_size=world_size)
    return world()


def world() -> World:
    """This process's :class:`World` (rank 0 of 1 when no process group is initialised).

    Example:
        >>> world().rank
        0
    """
    if dist.is_available() and dist.is_initialized():
        launched = launch_env() or (dist.get_rank(), dist.get_world_size(), dist.get_rank())
        cuda = torch.cuda.is_available() and "nccl" in str(dist.get_backend())
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        return World(dist.get_rank(), dist.get_world_size(), launched[2], str(dist.get_backend()), device)
    return World(0, 1, 0, None, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def is_distributed() -> bool:
    """Whether this process is one of several (an initialised process group of more than one rank).

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 for a single process).

    Example:
        >>> rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many processes take part (1 for a single process).

    Example:
        >>> world_size()
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 for a single process).

    Example:
        >>> local_rank()
        0
    """
    return world().local_rank


def is_main() -> bool:
    """True on rank 0, the one process that writes logs, checkpoints, results and progress bars.

    Example:
        >>> is_main()
        True
    """
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing for a single process).

    Example:
        >>> barrier()
    """
    if is_distributed():
        _collective("barrier", dist.barrier)


def cleanup() -> None:
    """Leave the process group (nothing when none is initialised).

    Example:
        >>> cleanup()
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def abort(reason: str = "") -> None:
    """Tear this rank's process group down at once, after it failed outside a sync point.

    Its peers' pending and next collectives then fail within moments (gloo) instead of waiting for
    the timeout; under ``torchrun`` the job stops as soon as this process exits non-zero. Prints
    one line naming the rank to stderr.

    Example:
        >>> abort()   # no process group: nothing to do
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    detail = f": {reason}" if reason else ""
    print(f"recgym: rank {dist.get_rank()} of {dist.get_world_size()} failed{detail}; "
          "stopping the other ranks", file=sys.stderr, flush=True)
    try:
        if "nccl" in str(dist.get_backend()):
            dist.distributed_c10d._abort_process_group()
        else:
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort while already failing: the original error matters
        pass


# -- seeds and shards ------------------------------------------------------------------------------


def rank_seed(base: int, rank_: int | None = None) -> int:
    """The seed of what rank ``rank_`` draws for itself alone (its rollouts) from the shared ``base``.

    Rank 0 keeps ``base``, so a single process is unchanged; rank r > 0 gets
    ``SeedSequence([base, r])``'s first 32-bit word (independent streams, the same on every run).

    Example:
        >>> rank_seed(7, 0), rank_seed(7, 1) == rank_seed(7, 1), rank_seed(7, 1) != rank_seed(7, 2)
        (7, True, True)
    """
    r = rank() if rank_ is None else rank_
    if r == 0:
        return int(base)
    return int(np.random.SeedSequence([int(base), int(r)]).generate_state(1)[0])


def shard_slice(n: int, rank_: int | None = None, world_size_: int | None = None) -> slice:
    """Rank ``rank_``'s contiguous share of ``n`` items: ``np.array_split`` order (the first
    ``n % world`` ranks take one more), so the shards in rank order are the whole.

    Example:
        >>> [shard_slice(5, r, 2) for r in range(2)]
        [slice(0, 3, None), slice(3, 5, None)]
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def minibatch_shards(n: int, parts: int, rank_: int | None = None, world_size_: int | None = None) -> list[
        np.ndarray]:
    """Positions (in a global batch of ``n`` groups) of rank ``rank_``'s groups in each minibatch.

    The global batch is split into ``min(parts, n)`` minibatches as one process splits it
    (``np.array_split``), then each minibatch into ``world_size`` contiguous shards; rank r takes
    shard r of every minibatch. The global minibatch j is thus one process's minibatch j. Every
    minibatch needs at least one group per rank: a clear error otherwise.

    Example:
        >>> [p.tolist() for p in minibatch_shards(8, 2, 1, 2)]   # minibatches [0..3], [4..7]
        [[2, 3], [6, 7]]
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world_size_ is None else world_size_
    chunks = np.array_split(np.arange(n), min(parts, n)) if n else []
    if chunks and min(len(c) for c in chunks) < w:
        raise ValueError(f"{n} requests per step in {len(chunks)} minibatches leave fewer than one request "
                         f"per process in a minibatch with {w} processes: raise requests_per_step "
                         f"(--requests-per-step) to at least {w * len(chunks)} or lower minibatches")
    return [c[shard_slice(len(c), r, w)] for c in chunks]


# -- collectives -----------------------------------------------------------------------------------


def _collective(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a collective; a peer that died or timed out becomes a :class:`DistributedError` naming it."""
    try:
        return fn(*args, **kwargs)
    except DistributedError:
        raise
    except (RuntimeError, ValueError) as err:  # DistBackendError / DistNetworkError are RuntimeErrors
        raise DistributedError(
            f"rank {dist.get_rank()}: the collective '{what}' failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Another rank most likely stopped: its own "
            f"error is printed above (under torchrun, see 'Root Cause'); a rank that waited more than "
            f"{TIMEOUT_ENV}={timeout_seconds():g} s for its peers fails the same way") from err


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for a single process.

    Example:
        >>> all_gather_objects({"hits": 3})
        [{'hits': 3}]
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    _collective("all_gather_object", dist.all_gather_object, out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself for a single process).

    Example:
        >>> broadcast_object("resume")
        'resume'
    """
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    _collective("broadcast_object", dist.broadcast_object_list, box, src=src)
    return box[0]


def all_sum(values: Sequence[float] | np.ndarray | float) -> Any:
    """Sum of numbers over ranks, in float64 (a number in, a number out; an array in, an array out).

    Example:
        >>> all_sum(3), all_sum([1.0, 2.0]).tolist()
        (3.0, [1.0, 2.0])
    """
    scalar = np.isscalar(values)
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if is_distributed():
        t = torch.from_numpy(array.copy())
        _collective("all_reduce", dist.all_reduce, t)
        array = t.numpy()
    return float(array[0]) if scalar else array


def gather_rows(array: np.ndarray) -> np.ndarray:
    """Concatenate every rank's rows (any numpy dtype; the first dimension may differ), in rank order.

    Exact (no float conversion): the bytes travel as they are.

    Example:
        >>> gather_rows(np.array([[True, False]])).tolist()
        [[True, False]]
    """
    if not is_distributed():
        return array
    array = np.ascontiguousarray(array)
    sizes = all_gather_objects((array.shape, array.dtype.str))
    row_shape, dtype = sizes[0][0][1:], sizes[0][1]
    if any(tuple(s[0][1:]) != tuple(row_shape) or s[1] != dtype for s in sizes):
        raise DistributedError(f"gather_rows: ranks hold different row shapes / dtypes {sizes}")
    nbytes = [int(np.prod(s[0], dtype=np.int64)) * np.dtype(dtype).itemsize for s in sizes]
    longest = max(max(nbytes), 1)
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[: array.nbytes] = torch.from_numpy(array.view(np.uint8).reshape(-1).copy())
    parts = [torch.empty(longest, dtype=torch.uint8) for _ in sizes]
    _collective("all_gather", dist.all_gather, parts, mine)
    rows = [np.frombuffer(p[:nb].numpy().tobytes(), dtype=dtype).reshape(s[0])
            for p, nb, s in zip(parts, nbytes, sizes)]
    return np.concatenate(rows)


# -- the global batch's loss -----------------------------------------------------------------------

_SYNC_DEPTH = 0


@contextmanager
def loss_sync(enabled: bool = True) -> Iterator[None]:
    """Within this block, :func:`global_sum` and :func:`global_cat` reach over every rank.

    The training loops wrap each loss computation in it, on every rank, so a learner normalises by
    the global batch's counts; outside it (e.g. a selection method calling ``learner.loss`` on one
    rank) the same code stays local and never waits for peers.

    Example:
        >>> with loss_sync():
        ...     global_sum(torch.tensor(4.0)).item()
        4.0
    """
    global _SYNC_DEPTH
    _SYNC_DEPTH += int(enabled)
    try:
        yield
    finally:
        _SYNC_DEPTH -= int(enabled)


def syncing() -> bool:
    """Whether losses are being normalised over several ranks now (inside :func:`loss_sync`).

    Example:
        >>> syncing()
        False
    """
    return _SYNC_DEPTH > 0 and is_distributed()


def global_sum(value: torch.Tensor | float | int) -> Any:
    """The sum of ``value`` over ranks inside :func:`loss_sync` (detached), else ``value`` itself.

    Use it for the denominators of means over the global batch: a rank's share of the loss is
    ``local_sum / global_sum(local_count)``, and the ranks' gradients are then summed.

    Example:
        >>> global_sum(5)
        5
    """
    if not syncing():
        return value
    if torch.is_tensor(value):
        t = value.detach().to(torch.float64).cpu().clone()
        _collective("all_reduce", dist.all_reduce, t)
        return t.to(value.dtype).to(value.device)
    total = all_sum(float(value))
    return int(round(total)) if isinstance(value, int) else total


def global_cat(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Inside :func:`loss_sync`: every rank's 1-D ``values`` concatenated in rank order (detached) and
    the offset of this rank's part; else ``(values, 0)``.

    For selections over the global batch (KL-Cov's top-k tokens): every rank computes the same
    selection on the same vector and keeps its own part.

    Example:
        >>> global_cat(torch.tensor([1.0, 2.0]))
        (tensor([1., 2.]), 0)
    """
    if not syncing():
        return values, 0
    local = values.detach().cpu()
    counts = [int(c) for c in all_gather_objects(int(local.numel()))]
    longest = max(max(counts), 1)
    padded = torch.zeros(longest, dtype=local.dtype)
    padded[: local.numel()] = local
    parts = [torch.empty_like(padded) for _ in counts]
    _collective("all_gather", dist.all_gather, parts, padded)
    whole = torch.cat([p[:c] for p, c in zip(parts, counts)]).to(values.device)
    return whole, sum(counts[: dist.get_rank()])


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum ``params``' gradients over ranks in place (flat buckets; nothing for a single process).

    With each rank's loss its share of the global batch's loss (:func:`global_sum`), the sum is the
    gradient of the global loss. A parameter with a gradient on some rank but not on this one
    gets zeros here first, so every rank steps the same parameters; one without a gradient
    anywhere keeps ``None`` (as in one process). Sharded parameters (``DTensor``: FSDP's decoder
    blocks, :mod:`agents.parallel.fsdp`) are skipped: FSDP has already summed their gradients.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), 3.0)
        >>> sum_gradients([p]); p.grad.tolist()
        [3.0, 3.0]
    """
    if not is_distributed():
        return
    params = [p for p in params if not is_dtensor(p)]  # FSDP reduce-scatters its own (agents.parallel.fsdp)
    has = all_sum([float(p.grad is not None) for p in params]) if params else np.zeros(0)
    active = [p for p, h in zip(params, has) if h > 0]
    for p in active:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict[tuple[torch.device, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in active:
        groups.setdefault((p.grad.device, p.grad.dtype), []).append(p)
    for members in groups.values():
        for bucket in _buckets(members):
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            _collective("all_reduce (gradients)", dist.all_reduce, flat)
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset: offset + q.grad.numel()].view_as(q.grad))
                offset += q.grad.numel()


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a sharded ``DTensor`` (a parameter, gradient or moment of an FSDP block).

    Example:
        >>> is_dtensor(torch.zeros(2))
        False
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed tensors
        return False
    return isinstance(tensor, DTensor)


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over the global gradient, with FSDP's sharded gradients in it.

    Call it after :func:`sum_gradients`, on every rank. Without sharded gradients it *is*
    ``clip_grad_norm_`` (the gradients are then the same on every rank). With them (``DTensor``
    gradients of FSDP's decoder blocks, :mod:`agents.parallel.fsdp`: each rank holds its shard of the summed
    gradient) the norm is ``sqrt(sum over ranks of |shard|^2 + |replicated|^2)``: the shards' squares
    are summed over ranks (a collective) and the replicated gradients, the same on every rank, count
    once. Every gradient is then scaled by ``min(1, max_norm / (norm + 1e-6))`` as torch does, and
    the norm is returned (float32; NaN or inf when a gradient is, which the loops stop on before
    stepping).

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2)); p.grad = torch.tensor([3.0, 4.0])
        >>> float(clip_grad_norm([p], 1.0)), [round(g, 4) for g in p.grad.tolist()]
        (5.0, [0.6, 0.8])
    """
    params = [p for p in params if p.grad is not None]
    sharded = [p.grad for p in params if is_dtensor(p.grad)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    replicated = [p.grad for p in params if not is_dtensor(p.grad)]
    locals_ = [g.to_local() for g in sharded]
    device = locals_[0].device

    def squares(grads: list[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=device)
        for g in grads:
            total += torch.linalg.vector_norm(g, 2, dtype=torch.float32).to(device) ** 2
        return total

    shard_sq = squares(locals_)
    if is_distributed():
        _collective("all_reduce (gradient norm)", dist.all_reduce, shard_sq)
    norm = torch.sqrt(shard_sq + squares(replicated))
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in [*locals_, *replicated]:  # to_local() shares the shard's storage: scaled in place
        g.mul_(coef.to(g.device, g.dtype))
    return norm


def _buckets(params: list[torch.nn.Parameter]) -> list[list[torch.nn.Parameter]]:
    """Consecutive runs of ``params`` of at most ``BUCKET_ELEMENTS`` gradient elements (one at least)."""
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        if not buckets or size + p.grad.numel() > BUCKET_ELEMENTS:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.grad.numel()
    return buckets


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (as DDP does at start).

    Example:
        >>> broadcast_parameters(torch.nn.Linear(2, 2))   # a single process: nothing to do
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            _collective("broadcast (parameters)", dist.broadcast, t.data, src=src)


def mean_over_ranks(record: dict[str, Any]) -> dict[str, Any]:
    """Each number of ``record`` averaged over the ranks that have it (other values: rank 0's).

    For logging per-step statistics (hit rate, entropy, clip fraction) of the global batch.

    Example:
        >>> mean_over_ranks({"hit_rate": 0.25, "name": "grpo"})
        {'hit_rate': 0.25, 'name': 'grpo'}
    """
    if not is_distributed():
        return record
    records = all_gather_objects(record)
    out = dict(records[0])
    for key in set().union(*records):
        values = [r[key] for r in records
                  if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        if values:
            out[key] = float(np.mean(values))
        elif key not in out:
            out[key] = next(r[key] for r in records if key in r)
    return out


# -- failures ---------------------------------------------------------------------------------------


@contextmanager
def agree(what: str) -> Iterator[None]:
    """A sync point: if the block raises on any rank, it raises on every rank.

    The failing rank raises its own exception; every other rank raises a
    :class:`DistributedError` naming the failed rank(s) and their messages. Wrap code that does
    no collectives of its own (argument checks, loading data, opening the run folder). For a
    single process this is a plain block.

    Example:
        >>> with agree("arguments"):
        ...     pass
    """
    if not is_distributed():
        yield
        return
    error: BaseException | None = None
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised below, after the peers hear of it
        error = err
    messages = all_gather_objects(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
    if failed:
        raise DistributedError(f"{what} failed on {len(failed)} of {len(messages)} ranks, so every rank "
                               "stops; " + "; ".join(failed))


@contextmanager
def on_main(what: str) -> Iterator[bool]:
    """A block that runs on rank 0 only (writing files), then a sync point: yields ``is_main()``.

    A failure on rank 0 reaches every rank as with :func:`agree`; the other ranks wait here
    until rank 0 is done, so they never read a file rank 0 is still writing.

    Example:
        >>> with on_main("saving") as main:
        ...     main
        True
    """
    with agree(what):
        yield is_main()


@contextmanager
def stop_all_on_error() -> Iterator[None]:
    """Run a whole job: a rank whose code raises aborts its process group first (:func:`abort`).

    Its peers then fail at their next collective instead of waiting (and ``torchrun`` stops them
    as soon as this process exits); the exception is re-raised unchanged.

    Example:
        >>> with stop_all_on_error():
        ...     pass
    """
    try:
        yield
    except BaseException as err:
        if is_distributed():
            abort(f"{type(err).__name__}: {err}")
        raise


__all__ = ["DistributedError", "World", "abort", "agree", "all_gather_objects", "all_sum", "barrier",
           "broadcast_object", "broadcast_parameters", "cleanup", "clip_grad_norm", "default_backend",
           "gather_rows", "global_cat", "global_sum", "init", "is_distributed", "is_dtensor", "is_main",
           "launch_env", "local_rank", "loss_sync", "mean_over_ranks", "minibatch_shards", "on_main", "rank",
           "rank_seed", "shard_slice", "stop_all_on_error", "sum_gradients", "timeout_seconds", "world",
           "world_size"]
