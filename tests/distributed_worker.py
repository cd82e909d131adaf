"""Run by tests/test_distributed.py under torchrun (2 gloo processes on 127.0.0.1).

``python -m torch.distributed.run --nproc-per-node 2 ... tests/distributed_worker.py OUT``:
each rank checks the collectives of ``advlab.distributed`` and one epoch of data-parallel
``fit`` under every defense objective, and writes what it found to ``OUT.<rank>.json``
(the test reads and asserts; an exception here ends the worker with a traceback).
"""

from __future__ import annotations

import copy
import json
import os
import sys

import torch

from advlab import data, defenses, distributed, models
from advlab.train.config import TrainConfig
from advlab.train.loop import TrainingDiverged, fit
from advlab.train.objective import CrossEntropy

TRAIN_N = 48  # three global batches of 16 (8 rows per rank)


def flat(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter and buffer, flattened (float64)."""
    return torch.cat([t.detach().double().reshape(-1) for t in model.state_dict().values()])


def same_on_every_rank(t: torch.Tensor) -> bool:
    rows = distributed.all_gather_tensor(t[None])
    return bool((rows == rows[0]).all())


def collectives() -> dict[str, object]:
    r, w = distributed.rank(), distributed.world_size()
    out: dict[str, object] = {"rank": r, "world": w, "main": distributed.is_main()}
    # variable lengths, rank 0 empty; dtypes kept (bool travels as bytes)
    t = torch.arange(3 * r * 2, dtype=torch.float32).reshape(3 * r, 2)
    g = distributed.all_gather_tensor(t)
    expect = torch.cat([torch.arange(3 * i * 2, dtype=torch.float32).reshape(3 * i, 2)
                        for i in range(w)])
    out["gather"] = bool(torch.equal(g, expect))
    b = distributed.all_gather_tensor(torch.tensor([r % 2 == 1, True]))
    out["gather_bool"] = b.dtype == torch.bool and b.tolist() == [False, True, True, True]
    try:
        distributed.all_gather_tensor(torch.zeros(2, 3 + r))
        out["shape_mismatch"] = "no error"
    except ValueError as e:
        out["shape_mismatch"] = str(e)
    try:
        distributed.all_gather_tensor(torch.zeros(2, dtype=torch.float32 if r else torch.int64))
        out["dtype_mismatch"] = "no error"
    except ValueError as e:
        out["dtype_mismatch"] = str(e)
    # contiguous shares whose concatenation in rank order is the whole
    idx = torch.arange(7)
    out["shard"] = distributed.all_gather_tensor(distributed.shard(idx)).tolist()
    _, batches = distributed.shard_batches(torch.arange(10), 3)
    out["batches"] = [c.tolist() for c in batches]
    # every rank raises rank 0's error
    try:
        distributed.on_main(lambda: (_ for _ in ()).throw(ValueError("made on rank 0")))
        out["on_main_error"] = None
    except ValueError as e:
        out["on_main_error"] = str(e)
    out["on_main_value"] = distributed.on_main(lambda: f"from rank {distributed.rank()}")
    # points that differ per rank are refused on every rank, not silently mixed up
    try:
        distributed.shard_batches(torch.arange(4), 2, same=(torch.full((4, 2), float(r)),))
        out["different_data"] = "no error"
    except ValueError as e:
        out["different_data"] = str(e)
    with distributed.local():
        out["local_world"] = distributed.world_size()
    return out


CASES = [  # (objective name, parameters, model, equal to one process's step)
    ("cross-entropy", {}, "mlp", True),
    ("fgsm-at", {}, "mlp", True),
    ("pgd-at", {"steps": 3, "random_start": False}, "mlp", True),
    ("fast-at", {}, "mlp", False),  # random start per rank: the same only across ranks
    ("deepfool-finetune", {"steps": 5}, "mlp", True),
    ("deepfool-finetune", {"steps": 5, "refresh": "epoch"}, "mlp", True),
    ("deep-defense", {"steps": 2}, "mlp", True),
    ("lipschitz", {}, "mlp", True),
    ("pgd-at", {"steps": 2, "random_start": False}, "resnet-small", False),  # batch norm
]


def objectives() -> dict[str, object]:
    ds = data.load("digits", "train")
    train = ds.subset(torch.arange(TRAIN_N))
    config = TrainConfig(epochs=1, batch_size=16, optimizer="sgd", lr=0.1, seed=0,
                         device="cpu")
    out: dict[str, object] = {}
    for name, params, arch, exact in CASES:
        key = f"{name} {params} {arch}"
        torch.manual_seed(0)
        model = models.create(arch, dataset="digits",
                              **({"width": 4} if arch == "resnet-small" else {}))
        objective = (None if name == "cross-entropy"
                     else defenses.create_objective(name, dataset="digits", **params))
        if hasattr(objective, "prepare_model"):
            model = objective.prepare_model(model)
        alone = copy.deepcopy(model)
        result = fit(model, train, config, objective=objective, progress=False)
        row: dict[str, object] = {
            "same_on_ranks": same_on_every_rank(flat(model)),
            "loss": result.history[-1]["train_loss"],
            "finite": bool(torch.isfinite(flat(model)).all()),
            "forward_restored": "forward" not in model.__dict__,
        }
        with distributed.local():  # the same epoch in one process, on the whole batches
            ref = fit(alone, train, config, objective=objective, progress=False)
        row["max_param_diff"] = (flat(model) - flat(alone)).abs().max().item()
        row["loss_alone"] = ref.history[-1]["train_loss"]
        row["exact"] = exact
        out[key] = row
    return out


class NanOnRank1:
    """Cross-entropy, NaN on rank 1's second batch only."""

    name = "nan-on-rank-1"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, x, y):
        self.calls += 1
        out = CrossEntropy()(model, x, y)
        if distributed.rank() == 1 and self.calls == 2:
            out.loss = out.loss * float("nan")
        return out


def divergence() -> str | None:
    """Every process stops at the batch where one process's loss is NaN."""
    train = data.load("digits", "train").subset(torch.arange(TRAIN_N))
    config = TrainConfig(epochs=1, batch_size=16, seed=0, device="cpu")
    try:
        fit(models.create("mlp", dataset="digits"), train, config, objective=NanOnRank1(),
            progress=False)
    except TrainingDiverged as e:
        return str(e)
    return None


def main(path: str) -> None:
    torch.set_num_threads(1)
    if not distributed.init_from_env():
        raise SystemExit("expected to run under torchrun with WORLD_SIZE > 1")
    found = {"collectives": collectives(), "objectives": objectives(),
             "divergence": divergence()}
    with open(f"{path}.{distributed.rank()}.json", "w", encoding="utf-8") as f:
        json.dump(found, f)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
    # torch's gloo threads can abort the interpreter's own teardown now and then ("terminate
    # called without an active exception", after destroy_process_group): everything is
    # written and the group is left, so end the process without that teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
