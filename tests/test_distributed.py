"""advlab on torch.distributed: sharded evaluation and data-parallel training (issue 18).

Two gloo processes on 127.0.0.1 started by torch.distributed's launcher (torchrun), each run
bounded by a subprocess timeout; ports are picked free by binding port 0. The numbers of a
sharded evaluation must equal one process's exactly (every rank attacks the very batches one
process would make, random draws keyed by point index); data-parallel training must follow
one process's loss curve (see ``test_ddp_training_resumes_after_a_killed_rank`` for the
tolerance) and resume after a rank is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from advlab import defenses, distributed, models
from advlab.cli.main import app
from advlab.io import load_state, load_state_meta
from advlab.train.classifier import ClassifierJob, load_splits
from advlab.train.loop import fit

TIMEOUT = 120  # seconds for any launched job (they take 10-20 s here)
runner = CliRunner()
EVAL = ["--eps", "0.1", "--suite", "quick", "--n", "60", "--batch-size", "16", "--save-adv",
        "--device", "cpu", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    """The test's environment, one thread per process, without torchrun's variables."""
    out = {k: v for k, v in os.environ.items() if k not in distributed.ENV}
    if out.get("ADVLAB_DATA"):  # the launched processes run elsewhere (cwd = a tmp dir)
        out["ADVLAB_DATA"] = str(Path(out["ADVLAB_DATA"]).resolve())
    return {**out, "OMP_NUM_THREADS": "1", "ADVLAB_BATCH_SIZE": "500",
            "PYTHONUNBUFFERED": "1"}


def launcher(*args: str, nproc: int = 2, port: int | None = None) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            "--master-addr=127.0.0.1", f"--master-port={port or free_port()}", *args]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def without_seconds(d):
    if isinstance(d, dict):
        return {k: without_seconds(v) for k, v in d.items() if k != "seconds"}
    if isinstance(d, list):
        return [without_seconds(v) for v in d]
    return d


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# --- one process: everything is a no-op ----------------------------------------------------

def test_a_single_process_has_no_process_group_and_helpers_act_as_rank_0_of_1(monkeypatch):
    for k in distributed.ENV:
        monkeypatch.delenv(k, raising=False)
    assert distributed.init_from_env() is False
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    idx = torch.arange(5)
    assert distributed.shard(idx) is idx and distributed.all_gather_tensor(idx) is idx
    assert distributed.shard_batches(idx, 2)[1][-1].tolist() == [4]
    assert distributed.on_main(lambda a: a + 1, 1) == 2 and distributed.share(5) == 5
    assert distributed.rank_seed(7) == 7 and distributed.split_batch(9) == (0, 9)
    with distributed.data_parallel(torch.nn.Linear(2, 2)) as ddp:
        assert ddp is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT"):
        distributed.init_from_env()  # a partial torchrun environment is named, not a hang


def test_nproc_relaunches_the_same_command_line_through_torchrun():
    args = ["eval", "robust", "RUN", "--nproc", "2", "--n", "60", "--nproc=3"]
    stripped = distributed.strip_option(args, "--nproc")
    assert stripped == ["eval", "robust", "RUN", "--n", "60"]
    cmd = distributed.launch_command(2, stripped)
    assert cmd[1:4] == ["-m", "advlab.launcher", "--standalone"]
    # "--" ends the launcher's options: --n would otherwise be read as its --nnodes
    assert cmd[cmd.index("advlab") + 1:] == ["--", *stripped]


def test_a_user_error_under_nproc_is_one_line_and_status_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "advlab", "eval", "robust", str(tmp_path / "no"),
                           "--eps", "0.1", "--nproc", "2"], env=env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "ChildFailedError" not in done.stderr
    assert "failed; the first, rank" in done.stderr and "status 2" in done.stderr, done.stderr
    assert "error:" in done.stderr + done.stdout


def test_nproc_is_refused_inside_torchrun_and_outside_the_command_line(monkeypatch, tmp_path):
    args = ["eval", "robust", str(tmp_path / "run"), "--eps", "0.1", "--nproc", "2"]
    res = runner.invoke(app, args)  # called from Python, not as `advlab ...`
    assert res.exit_code == 2 and "torchrun -m advlab" in res.output
    monkeypatch.setattr(sys, "argv", ["advlab", *args])
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "inside a torchrun job" in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_serves_gpu_tensors_when_cuda_is_available(monkeypatch):
    monkeypatch.delenv("ADVLAB_DIST_BACKEND", raising=False)
    assert distributed.default_backend() == "cpu:gloo,cuda:nccl"


# --- two processes --------------------------------------------------------------------------

def test_collectives_and_every_defense_objective_under_two_processes(tmp_path):
    """Variable-length gathers, shares, errors raised on every rank, and one epoch of
    data-parallel ``fit`` per objective: the ranks hold the same weights after it, and for
    deterministic objectives the weights of one process trained on the same global batches
    (differences of float rounding only: < 1e-5, and < 1e-4 for Deep Defense, whose DeepFool
    steps amplify rounding to a few 1e-5 on some CPUs)."""
    worker = Path(__file__).with_name("distributed_worker.py")
    run(launcher(str(worker), str(tmp_path / "out")), tmp_path)
    found = [json.loads((tmp_path / f"out.{r}.json").read_text()) for r in range(2)]
    for r, f in enumerate(found):
        c = f["collectives"]
        assert (c["rank"], c["world"], c["main"]) == (r, 2, r == 0)
        assert c["gather"] and c["gather_bool"] and c["shard"] == list(range(7))
        assert "same dtype and trailing dimensions" in c["shape_mismatch"]
        assert "same dtype" in c["dtype_mismatch"]
        assert c["batches"] == ([[0, 1, 2], [3, 4, 5]] if r == 0 else [[6, 7, 8], [9]])
        assert c["on_main_error"] == "made on rank 0" and c["on_main_value"] == "from rank 0"
        assert "the same points" in c["different_data"] and c["local_world"] == 1
        for key, row in f["objectives"].items():
            assert row["same_on_ranks"] and row["finite"] and row["forward_restored"], key
            if row["exact"]:
                tol = 1e-4 if key.startswith("deep-defense") else 1e-5
                assert row["max_param_diff"] < tol, key
                assert row["loss"] == pytest.approx(row["loss_alone"], rel=1e-5), key
    assert found[0]["objectives"] == found[1]["objectives"]  # every rank saw the same
    # a NaN loss on rank 1 alone stops both at that batch (its flag rides on the gradients)
    assert "loss became nan at epoch 1, batch 2" in found[1]["divergence"]
    assert "not finite on another process at epoch 1, batch 2" in found[0]["divergence"]


@pytest.fixture(scope="module")
def clf_run(tmp_path_factory):
    """An MLP trained for 2 epochs on digits, as a run directory."""
    out = tmp_path_factory.mktemp("dist") / "clf"
    res = runner.invoke(app, ["train", "classifier", "--dataset", "digits", "--epochs", "2",
                              "--out", str(out), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def single_eval(clf_run):
    out = clf_run.parent / "single"
    res = runner.invoke(app, ["eval", "robust", str(clf_run), *EVAL, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def assert_same_evaluation(single: Path, sharded: Path) -> None:
    assert without_seconds(read_metrics(sharded)) == without_seconds(read_metrics(single))
    a, b = (load_state(p / "points.safetensors") for p in (single, sharded))
    assert a.keys() == b.keys()
    for k, v in a.items():  # adversarial inputs, flags per step, norms: bit for bit
        assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], k


def test_sharded_eval_robust_gives_exactly_the_single_process_numbers(clf_run, single_eval):
    out = clf_run.parent / "sharded"
    done = run(launcher("-m", "advlab", "--", "eval", "robust", str(clf_run), *EVAL,
                        "--out", str(out)), clf_run.parent)
    assert_same_evaluation(single_eval, out)
    assert done.stdout.count("results in") == 1  # only rank 0 prints
    assert sorted(p.name for p in clf_run.parent.iterdir()) == ["clf", "sharded", "single"]


def test_two_nodes_rendezvous_on_one_machine(clf_run, single_eval):
    """Two launchers of one process each, as two machines would start them (c10d
    rendezvous on 127.0.0.1): the same numbers as one process."""
    out = clf_run.parent / "two-nodes"
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=issue18",
           "-m", "advlab", "--", "eval", "robust", str(clf_run), *EVAL, "--out", str(out)]
    nodes = [subprocess.Popen([*cmd[:3], f"--node-rank={i}", *cmd[3:]], cwd=clf_run.parent,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert_same_evaluation(single_eval, out)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in environ if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _epoch(ckpt: Path) -> int:
    try:
        return int(load_state_meta(ckpt).get("epoch", 0))
    except (OSError, ValueError):
        return 0


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_ddp_training_resumes_after_a_killed_rank_and_follows_one_process(tmp_path):
    """PGD adversarial training (deterministic start) of mlp-100 on digits: two processes
    are started and rank 0, the one that writes, is killed once an epoch is checkpointed
    (rank 1 is stopped first, so the run cannot finish meanwhile); ``--resume --nproc 2``
    finishes the run, and its loss curve is one process's.

    Tolerance: a data-parallel step averages two half-batch gradients where one process
    averages the whole batch, the same sum in another order, so the weights differ by float
    rounding (~1e-7 relative) and Adam carries that along; over these epochs the losses
    agree to 1e-4 relative, and a test prediction may flip (accuracy within 1%).
    """
    epochs = 4
    job = ["train", "classifier", "--dataset", "digits", "--model", "mlp-100", "--n-train",
           "480", "--batch-size", "32", "--epochs", str(epochs), "--defense", "pgd-at",
           "--defense-param", "random_start=false", "--device", "cpu", "--no-progress"]
    out = tmp_path / "ddp"
    first = subprocess.Popen(launcher("-m", "advlab", "--", *job, "--out", str(out)),
                             cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    killed_at = None
    try:
        deadline = time.monotonic() + TIMEOUT
        while first.poll() is None and time.monotonic() < deadline:
            done = _epoch(out / "checkpoint.safetensors")
            ranks = {_rank_of(c): c for c in _children(first.pid)}
            if done >= 1 and {0, 1} <= set(ranks):
                os.kill(ranks[1], signal.SIGSTOP)  # the run cannot move on
                killed_at = _epoch(out / "checkpoint.safetensors")
                os.kill(ranks[0], signal.SIGKILL)
                os.kill(ranks[1], signal.SIGCONT)  # to receive the launcher's SIGTERM
                break
            time.sleep(0.02)
        first.wait(timeout=TIMEOUT)
    finally:
        first.kill()
    assert killed_at is not None and killed_at < epochs, "the run ended before the kill"
    assert first.returncode != 0
    assert _epoch(out / "checkpoint.safetensors") == killed_at

    resumed = subprocess.run([sys.executable, "-m", "advlab", *job, "--out", str(out),
                              "--resume", "--nproc", "2"], cwd=tmp_path, env=env(),
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    ours = read_metrics(out)["history"]
    assert [r["epoch"] for r in ours] == list(range(1, epochs + 1))
    # one process, the same job through the API (train_classifier without its report)
    config = yaml.safe_load((out / "config.yaml").read_text())
    train_job = ClassifierJob.from_dict({k: v for k, v in config.items()
                                         if k not in ("defense", "defense_config")})
    train, val, test = load_splits(train_job)
    torch.manual_seed(train_job.train.seed)
    model = models.create("mlp-100", dataset="digits")
    objective = defenses.create_objective("pgd-at", dataset="digits", random_start=False)
    theirs = fit(model, train, train_job.train, objective=objective, val=val, test=test,
                 progress=False).history
    for a, b in zip(ours, theirs, strict=True):
        for k in ("train_loss", "adv_loss", "test_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-4), (a["epoch"], k)
        for k in ("train_acc", "adv_acc", "test_acc"):
            assert a[k] == pytest.approx(b[k], abs=0.01), (a["epoch"], k)
    assert not (out / ".lock").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_ddp_training_on_fashion_mnist_follows_one_process(tmp_path):
    """mlp-100 on Fashion-MNIST, 2 epochs: two processes vs one (tolerance as above)."""
    root = os.environ.get("ADVLAB_DATA")
    if not root or not (Path(root) / "fashion-mnist").is_dir():
        pytest.skip("needs Fashion-MNIST under $ADVLAB_DATA")
    job = ["train", "classifier", "--dataset", "fashion-mnist", "--model", "mlp-100",
           "--epochs", "2", "--device", "cpu", "--no-progress"]
    res = runner.invoke(app, [*job, "--out", str(tmp_path / "alone")])
    assert res.exit_code == 0, res.output
    run(launcher("-m", "advlab", "--", *job, "--out", str(tmp_path / "ddp")), tmp_path)
    ours, theirs = (read_metrics(tmp_path / d)["history"] for d in ("ddp", "alone"))
    for a, b in zip(ours, theirs, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.005)
