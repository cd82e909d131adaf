"""Run by tests/test_train_select.py under torchrun (2 gloo processes on 127.0.0.1).

``python -m torch.distributed.run --nproc-per-node 2 ... tests/select_worker.py OUT``: every
rank runs the same ``train_classifier`` job with epoch selection (rank 0 writes the run
directory ``OUT``) and writes the held-out scores it measured, the epoch it kept and a
fingerprint of the weights it ends with to ``OUT.<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from advlab import defenses, distributed
from advlab.train import classifier as clf
from advlab.train import select
from advlab.train.loop import weights_fingerprint
from test_train_select import JOB, OBJECTIVE, PARAMS  # the single-process runs' job


def main(path: str) -> None:
    torch.set_num_threads(1)
    if not distributed.init_from_env():
        raise SystemExit("expected to run under torchrun with WORLD_SIZE > 1")
    seen: list[float] = []
    score = select.HoldoutScore.__call__

    def spy(self, model):  # every rank records what it measured
        value = score(self, model)
        seen.append(value)
        return value

    kept: dict[str, object] = {}
    fit = clf.fit

    def fit_spy(model, *args, **kwargs):  # the weights each rank ends with
        result = fit(model, *args, **kwargs)
        kept.update(best_epoch=result.best_epoch, fingerprint=weights_fingerprint(model))
        return result

    select.HoldoutScore.__call__ = spy
    clf.fit = fit_spy
    objective = defenses.create_objective(OBJECTIVE, dataset=JOB.dataset, **PARAMS)
    extra = {"defense": OBJECTIVE, "defense_config": defenses.config(objective)}
    _, metrics = clf.train_classifier(JOB, path, objective=objective, progress=False,
                                      extra_config=extra)
    with open(f"{path}.{distributed.rank()}.json", "w", encoding="utf-8") as f:
        json.dump({"seen": seen, **kept, "selected_epoch": metrics["selected_epoch"]}, f)
    distributed.barrier()  # no process leaves while another still talks to it
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
    # torch's gloo threads can abort the interpreter's own teardown now and then ("terminate
    # called without an active exception", after destroy_process_group): everything is
    # written and the group is left, so end the process without that teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
