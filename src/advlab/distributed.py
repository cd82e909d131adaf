"""Several processes on torch.distributed: one process group, sharded work, rank-0 writing.

advlab scales out on the engine the PyTorch world already uses: ``torchrun`` starts N copies
of the same command (``torchrun --nproc-per-node 2 -m advlab eval robust ...``, or
``advlab ... --nproc 2``, which starts the same through ``torch.distributed.run``), and each
copy joins the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) in ``init_from_env``. Every process then
runs the same program on the same data:

- evaluation (``advlab.eval.robust_accuracy``, and everything built on it) gives each process
  a contiguous share of the attack's batches (``shard_batches``: the very batches one process
  would make) and gathers every point's result back in order (``gather_results``), so every
  process ends with the single-process answer, bit for bit;
- training (``advlab.train.loop.fit``) splits each global batch over the processes and
  averages gradients with ``DistributedDataParallel`` (``data_parallel``);
- rank 0 alone writes: ``advlab.runs`` creates the run directory there (``on_main``) and makes
  every write of the others a no-op; only rank 0 prints.

Backends: gloo on CPU; when CUDA is available the group is ``cpu:gloo,cuda:nccl``, so tensors
on a GPU travel by NCCL and CPU tensors by gloo (``ADVLAB_DIST_BACKEND`` overrides). Without
torchrun's variables (or with ``WORLD_SIZE=1``) nothing here creates a process group: every
function acts as for a single process (rank 0 of 1), at no cost.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_local = 0  # depth of ``local()`` blocks: inside one, every helper acts as a single process
_MAX_DIMS = 8  # of a tensor that all_gather_tensor gathers


# --- the process group ----------------------------------------------------------------------

def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected the environment variable {name} to be an integer (torchrun "
                         f"sets it), got {raw!r}") from None


def launched() -> bool:
    """True when torchrun's environment asks for more than one process (``WORLD_SIZE > 1``)."""
    return _env_int("WORLD_SIZE", 1) > 1


def default_backend() -> str:
    """``ADVLAB_DIST_BACKEND`` if set; else ``cpu:gloo,cuda:nccl`` where CUDA is available
    (NCCL for tensors on a GPU, gloo for CPU tensors), else ``gloo``."""
    chosen = os.environ.get("ADVLAB_DIST_BACKEND")
    if chosen:
        return chosen
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(timeout_s: float | None = None) -> bool:
    """Join the process group torchrun describes in the environment; True when one is active.

    A no-op returning False for a single process (no ``WORLD_SIZE``, or 1), and returning the
    group's state when one is already initialized (by this function or by the caller). With
    CUDA, the process's GPU is ``cuda:LOCAL_RANK`` (``torch.cuda.set_device``), so ``--device
    cuda`` (or ``auto``) puts each process on its own GPU. ``timeout_s`` bounds every
    collective (default: torch's, 30 minutes; ``ADVLAB_DIST_TIMEOUT`` in seconds).
    """
    if not dist.is_available():
        if launched():
            raise ValueError("expected a torch build with torch.distributed for WORLD_SIZE > 1, "
                             "got one without it")
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(f"expected torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, "
                         f"MASTER_PORT) for WORLD_SIZE={world}, got no {', '.join(missing)}")
    r = _env_int("RANK", 0)
    if not 0 <= r < world:
        raise ValueError(f"expected RANK in [0, {world - 1}], got {r}")
    if torch.cuda.is_available():
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
    if timeout_s is None and os.environ.get("ADVLAB_DIST_TIMEOUT"):
        timeout_s = float(os.environ["ADVLAB_DIST_TIMEOUT"])
    kw: dict[str, Any] = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    dist.init_process_group(backend=default_backend(), **kw)
    return True


def shutdown() -> None:
    """Leave the process group (if this process is in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside a process group of more than one process (and outside ``local()``)."""
    return (_local == 0 and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def rank() -> int:
    """This process's rank (0 for a single process)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes (1 for a single process)."""
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``; 0 for one process)."""
    return _env_int("LOCAL_RANK", 0) if active() else 0


def is_main() -> bool:
    """True on rank 0, the process that writes the run directory and prints."""
    return rank() == 0


@contextmanager
def local() -> Iterator[None]:
    """Act as a single process inside the block: no sharding, no collective (for work that
    rank 0 does alone, e.g. a figure that evaluates the model)."""
    global _local
    _local += 1
    try:
        yield
    finally:
        _local -= 1


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective on a tensor of ``device`` runs: in place when the backend serves
    that device (NCCL: cuda, gloo: cpu), else on the device the backend does serve."""
    backend = str(dist.get_backend()).lower()
    if device.type == "cuda" and "nccl" in backend:
        return device
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def barrier() -> None:
    """Wait until every process reaches this point (a no-op for a single process)."""
    if active():
        flag = torch.zeros(1, device=_comm_device(torch.device("cpu")))
        dist.all_reduce(flag)


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` (picklable) on every process; ``obj`` itself for one process."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """The element-wise sum of ``t`` over the processes (a new tensor on ``t``'s device)."""
    if not active():
        return t.clone()
    dev = _comm_device(t.device)
    buf = t.detach().to(dev).clone()
    dist.all_reduce(buf)
    return buf.to(t.device)


def all_gather_tensor(t: Tensor) -> Tensor:
    """The concatenation along dim 0 of every process's ``t`` (B_r, ...), in rank order.

    The B_r may differ (0 included): the sizes are gathered first and each tensor padded to
    the largest for the collective; the trailing dimensions and dtype must agree (else
    ``ValueError``, on every process). The result is on ``t``'s device, in ``t``'s dtype.
    """
    if not active():
        return t
    if t.dim() == 0:
        raise ValueError("expected a tensor with a first dimension to gather along, got a "
                         "scalar")
    if t.dim() > _MAX_DIMS:
        raise ValueError(f"expected a tensor of at most {_MAX_DIMS} dimensions, got {t.dim()}")
    dev = _comm_device(t.device)
    x = t.detach().to(dev)
    if x.dtype == torch.bool:  # not every backend reduces bools: travel as bytes
        x = x.to(torch.uint8)
    # (dtype, ndim, shape padded to _MAX_DIMS): the same length on every process
    kind = str(t.dtype)
    code = sum(ord(c) * 31**i for i, c in enumerate(kind)) % 2**31
    head = [code, x.dim(), *x.shape, *[0] * (_MAX_DIMS - x.dim())]
    shape = torch.tensor(head, dtype=torch.int64, device=dev)
    shapes = [torch.zeros_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    heads = [[int(v) for v in s] for s in shapes]
    sizes = [tuple(h[2:2 + h[1]]) for h in heads]
    if any(h[:2] != heads[0][:2] or s[1:] != sizes[0][1:] for h, s in zip(heads, sizes,
                                                                       strict=True)):
        raise ValueError(f"expected tensors (B, ...) of the same dtype and trailing dimensions "
                         f"on every process, got shapes {sizes} ({kind} here)")
    rows = [s[0] for s in sizes]
    most = max(rows)
    if most == 0:
        return t
    if x.shape[0] < most:
        x = torch.cat([x, x.new_zeros((most - x.shape[0], *x.shape[1:]))])
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat([o[:r] for o, r in zip(out, rows, strict=True)]).to(t.device, t.dtype)


# --- sharding -------------------------------------------------------------------------------

def _bounds(n: int) -> tuple[int, int]:
    """[start, end) of this rank's contiguous share of n items (sizes differ by at most 1)."""
    w, r = world_size(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def shard(items: Sequence[T] | Tensor) -> Sequence[T] | Tensor:
    """This process's contiguous share of ``items`` (e.g. point indices, in order): rank r of
    W gets the r-th of W parts whose sizes differ by at most one. Concatenating the shares in
    rank order gives ``items`` back (``all_gather_tensor``). All of ``items`` for one
    process."""
    if not active():
        return items
    start, end = _bounds(len(items))
    return items[start:end]


def share(n: int) -> int:
    """The size of the largest share of ``n`` items (``ceil(n / world_size())``)."""
    return math.ceil(n / world_size())


def _fingerprint(tensors: Sequence[Tensor]) -> list[float]:
    """Cheap sums (no copy of the data) that differ, in practice, when two processes hold
    different data: per tensor its size, its sum and a row-weighted sum."""
    out: list[float] = []
    for t in tensors:
        t = t.detach()
        table = t.flatten(1) if t.dim() > 1 else t.reshape(-1, 1)  # (N, D)
        rows = table.sum(dim=1, dtype=torch.float64)  # (N,)
        ramp = torch.arange(1, rows.numel() + 1, dtype=torch.float64, device=rows.device)
        out += [float(t.numel()), rows.sum().item(),
                (rows * ramp).sum().item() / max(rows.numel(), 1)]
    return out


def shard_batches(idx: Tensor, batch_size: int, same: Sequence[Tensor] = ()
                  ) -> tuple[int, list[Tensor]]:
    """``(batch_size, batches)``: the batches ``idx.split(batch_size)`` one process would make,
    this process's contiguous share of them.

    Under torchrun every process must pass the same ``idx`` (and the same ``same`` tensors,
    e.g. the evaluated points): a cheap fingerprint of them is compared across processes and
    a ``ValueError`` raised on every process when they differ (sharding points that differ
    per process would mix up results). The batch size is rank 0's (a measured batch size may
    differ between processes), so every process cuts the same batches.
    """
    if active():
        mine = torch.tensor([float(batch_size), *_fingerprint([idx, *same])],
                            dtype=torch.float64)
        rows = all_gather_tensor(mine[None]).tolist()
        if any(r[1:] != rows[0][1:] for r in rows):
            raise ValueError("expected every process to evaluate the same points (the same "
                             "data, labels and model), got different data on different ranks; "
                             "evaluate per-process data inside advlab.distributed.local()")
        batch_size = int(rows[0][0])
    batches = list(idx.split(batch_size)) if idx.numel() else []
    return batch_size, list(shard(batches))


def gather_results(parts: list[Any], n: int, batch_size: int, *, like_adv: Tensor,
                   like_logits: Tensor) -> list[Any]:
    """Every process's ``AttackResult`` parts (one per batch of its ``shard_batches`` share of
    ``n`` points in batches of ``batch_size``), gathered so that each process gets the list
    one process would have made: one result per batch, in order.

    ``like_adv`` (0, ...) and ``like_logits`` (0, K) give the shapes and dtypes of an empty
    share. The ``info`` of each batch travels too (its tensors via the CPU)."""
    if not active():
        return parts
    from advlab.attacks.base import AttackResult

    batch_rows = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    dev = like_adv.device
    if parts:
        cols = {k: torch.cat([getattr(p, k).to(dev) for p in parts])
                for k in AttackResult.FIELDS}
    else:  # no batch here: empty columns of the right shapes and dtypes
        cols = {"adv": like_adv[:0], "success": torch.zeros(0, dtype=torch.bool, device=dev),
                "l2": torch.zeros(0, device=dev), "linf": torch.zeros(0, device=dev),
                "pred": torch.zeros(0, dtype=torch.int64, device=dev),
                "logits": like_logits[:0].to(dev),
                "iterations": torch.zeros(0, dtype=torch.int64, device=dev)}
    full = {k: all_gather_tensor(v) for k, v in cols.items()}
    infos = [i for rank_infos in all_gather_object([_to_cpu(p.info) for p in parts])
             for i in rank_infos]
    out, start = [], 0
    for rows, info in zip(batch_rows, infos, strict=True):
        out.append(AttackResult(**{k: v[start:start + rows] for k, v in full.items()},
                                info=info))
        start += rows
    return out


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# --- writing on rank 0 ----------------------------------------------------------------------

def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorate ``fn`` to run on rank 0 only (returning None elsewhere): for writers."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling, else a ValueError (or RuntimeError) with its text."""
    try:
        back = pickle.loads(pickle.dumps(err))
        if type(back) is type(err) and str(back) == str(err):
            return err
    except Exception:  # any failure to round-trip: send the text instead
        pass
    kind = ValueError if isinstance(err, ValueError) else RuntimeError
    return kind(str(err))


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run on rank 0 after every process got here; its value (which
    must pickle) returned on every process, or its exception raised on every process (so all
    of them fail the same way, e.g. a run directory that cannot be created)."""
    if not active():
        return fn(*args, **kwargs)
    barrier()  # every process has done its own checks before rank 0 acts on them
    if is_main():
        try:
            value = fn(*args, **kwargs)
        except Exception as e:
            broadcast_object((False, _portable(e)))
            raise
        broadcast_object((True, value))
        return value
    ok, value = broadcast_object(None)
    if not ok:
        raise value
    return value


# --- data-parallel training -----------------------------------------------------------------

def rank_seed(seed: int) -> int:
    """The seed of this process's random draws (dropout, random starts): ``seed`` on rank 0,
    as for a single process, and a distinct derived seed on every other rank."""
    r = rank()
    return seed if r == 0 else (seed * 1_000_003 + 7919 * r) % (2**63 - 1)


def split_batch(n: int) -> tuple[int, int]:
    """[start, end) of this process's rows of a global batch of ``n`` rows."""
    return _bounds(n) if active() else (0, n)


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process, as
    ``DistributedDataParallel(broadcast_buffers=True)`` does before each forward; one
    collective per buffer dtype."""
    if not active():
        return
    buffers = [b for b in model.buffers() if b is not None]
    by_dtype: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for b in buffers:
        by_dtype.setdefault((b.dtype, b.device), []).append(b)
    for (_, device), group in by_dtype.items():
        flat = torch.cat([b.detach().reshape(-1) for b in group]).to(_comm_device(device))
        dist.broadcast(flat, src=0)
        start = 0
        for b in group:
            b.copy_(flat[start:start + b.numel()].view_as(b))
            start += b.numel()


def with_flag(ddp: nn.Module, loss: Tensor, flag: Tensor) -> Tensor:
    """``loss`` plus a term whose gradient with respect to the DDP replica's flag parameter
    is ``flag`` (a 0/1 scalar of this process; the loss's value and its other gradients are
    unchanged, also when the loss is NaN). Back-propagate the result: DDP averages that
    gradient with the others, so afterwards ``flag_raised(ddp)`` is the same on every process
    — True when some process raised its flag (e.g. its loss was not finite) — at no extra
    collective."""
    replica = ddp.module
    replica.flag.grad = None
    return loss + replica.flag * flag.detach().to(replica.flag.dtype)


def flag_raised(ddp: nn.Module) -> bool:
    """After the backward of ``with_flag``'s loss: whether any process raised its flag."""
    grad = ddp.module.flag.grad
    return grad is not None and bool(grad > 0)


class _Replica(nn.Module):
    """What ``DistributedDataParallel`` wraps in ``data_parallel``: the model's own forward
    (``own``: its class's, or one set on the instance before), reached without the redirect
    that sends calls of the model through DDP."""

    def __init__(self, model: nn.Module, own: Callable[..., Any],
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.model = model
        self._own = own
        # a scalar whose gradient carries a per-step flag through DDP's own all-reduce
        # (``with_flag``): every process learns it without a collective of its own
        self.flag = nn.Parameter(torch.zeros((), device=device))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._own(*args, **kwargs)


def _wrap(model: nn.Module, own: Callable[..., Any]) -> nn.Module:
    """``DistributedDataParallel`` of a ``_Replica`` of ``model`` calling ``own``: on the
    model's GPU where it has one; buffers equal at the start (rank 0's), never synchronized
    inside a forward (``broadcast_buffers`` does it once per step)."""
    params = next(model.parameters(), None)
    device_ids = None
    if params is not None and params.device.type == "cuda":
        device_ids = [params.device.index if params.device.index is not None
                      else torch.cuda.current_device()]
    # the name of that setting changed in torch 2.13 (broadcast_buffers -> forward_sync_buffers)
    ddp_cls = nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(ddp_cls).parameters
               else {"broadcast_buffers": False})
    replica = _Replica(model, own, params.device if params is not None else None)
    return ddp_cls(replica, device_ids=device_ids, **no_sync)


def data_parallel_call(model: nn.Module, fn: Callable[..., Any]) -> nn.Module | None:
    """A ``DistributedDataParallel`` module whose call is ``fn(*args, **kwargs)``, averaging
    the gradients of ``model``'s parameters over the processes in the backward of what it
    returns (None for a single process).

    For objectives that are not ``model``'s forward, e.g. a VAE's ``model.loss``, which calls
    the encoder and decoder itself: every parameter of ``model`` must get a gradient in each
    such backward, and the backward must go through ``with_flag`` (the module carries the flag
    parameter that ``data_parallel``'s does). The model is not changed."""
    return _wrap(model, fn) if active() else None


@contextmanager
def data_parallel(model: nn.Module) -> Iterator[nn.Module | None]:
    """Inside the block, every call of ``model`` goes through ``DistributedDataParallel``
    (a single process: nothing changes; yields the DDP module, or None).

    Training objectives receive ``model`` itself and use it freely: they read its attributes
    and layers (the Lipschitz objective) and craft adversaries with it in eval mode, with a
    number of gradient passes that may differ per process (DeepFool stops per point). So the
    model is not replaced by a wrapper; instead its ``forward`` is redirected for the block
    to a DDP module wrapping the model's own forward: the gradients of the loss are averaged
    over the processes during ``backward`` as DDP does, and the parameters start equal
    (broadcast from rank 0). Buffers start equal but are not broadcast in every forward (a
    collective per forward would deadlock when processes make different numbers of passes);
    call ``broadcast_buffers`` once per step instead.
    """
    if not active():
        yield None
        return
    before = model.__dict__.get("forward")  # a forward set on the instance is kept
    own = before if before is not None else functools.partial(type(model).forward, model)
    ddp = _wrap(model, own)
    # an instance attribute that is not a Module: the state dict and modules() are unchanged
    object.__setattr__(model, "forward", ddp.__call__)
    try:
        yield ddp
    finally:
        if before is None:
            model.__dict__.pop("forward", None)
        else:
            object.__setattr__(model, "forward", before)


# --- starting several processes ---------------------------------------------------------------

def launch_command(nproc: int, args: Sequence[str], *, module: str = "advlab") -> list[str]:
    """The command line that runs ``python -m {module} {args}`` as ``nproc`` processes on this
    machine through torch.distributed's launcher (torchrun, standalone rendezvous; by way of
    ``advlab.launcher``, which reports a failed process in one line). ``--``
    ends the launcher's options: without it the launcher reads an option of the command that
    abbreviates one of its own (``--n``: ``--nnodes``?) and stops."""
    import sys

    return [sys.executable, "-m", "advlab.launcher", "--standalone",
            f"--nproc-per-node={nproc}", "-m", module, "--", *args]


def strip_option(args: Sequence[str], option: str) -> list[str]:
    """``args`` without ``option VALUE`` / ``option=VALUE`` (e.g. ``--nproc 2``)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == option:
            skip = True
        elif not a.startswith(option + "="):
            out.append(a)
    return out


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``advlab {args}`` as ``nproc`` processes (``launch_command``) and return the
    launcher's exit status. Each process gets ``OMP_NUM_THREADS`` = cores / nproc (at least
    1) unless the variable is set: processes that each use every core slow each other down."""
    import subprocess

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"expected --nproc to be an integer >= 1, got {nproc!r}")
    if launched():
        raise ValueError("expected --nproc outside torchrun, got it inside a torchrun job "
                         "(torchrun already started the processes: drop --nproc)")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        return subprocess.call(launch_command(nproc, args), env=env)
    except KeyboardInterrupt:  # the launcher forwards Ctrl-C to its processes and ends them
        return 130
