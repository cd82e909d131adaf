"""Run directories for the report and run-index tests: written by hand (config.yaml,
metrics.json, figures) in the shapes the commands write, plus helpers to read a report back."""

from __future__ import annotations

import json
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml


def png(width: int = 3, height: int = 2, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid RGB PNG of one colour (a figure without matplotlib)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_run(path: Path, config: dict[str, Any] | None, metrics: dict[str, Any] | None,
             figures: dict[str, bytes] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name, data in (figures or {}).items():
        (path / "figures").mkdir(exist_ok=True)
        (path / "figures" / name).write_bytes(data)
    return path


VERSIONS = {"advlab": "0.1.0", "torch": "2.13.0+cpu", "numpy": "2.4.6", "python": "3.11.7"}


def train_metrics(acc: float = 0.9777158498764038, epochs: int = 3) -> dict[str, Any]:
    return {
        "dataset": "digits", "n_test": 359, "test_acc": acc, "test_loss": 0.0992274135351181,
        "per_class_acc": {str(k): 1.0 - k / 97 for k in range(10)},
        "confusion_matrix": [[35, 1, 0], [0, 36, 0], [2, 0, 33]],
        "history": [{"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 + 0.2 * e,
                     "lr": 0.002, "test_acc": 0.25 + 0.2 * e} for e in range(1, epochs + 1)],
        "best_epoch": epochs, "stopped_early": False, "epochs_completed": epochs,
        "mean_epoch_seconds": 1.2345678, "versions": VERSIONS}


def train_config(model: str = "mlp", defense: str | None = None, lr: float = 0.001
                 ) -> dict[str, Any]:
    cfg = {"command": "train classifier", "dataset": "digits", "model": model,
           "model_kwargs": {}, "n_train": None,
           "train": {"epochs": 3, "batch_size": 64, "optimizer": "adam", "lr": lr, "seed": 0}}
    if defense:
        cfg["defense"] = defense
        cfg["defense_config"] = {"name": defense, "eps": 0.3}
    return cfg


def checks(failed: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    names = ("gradients", "unbounded", "more-steps")
    return [{"name": n, "passed": n not in failed,
             "message": f"{n} {'failed' if n in failed else 'ok'}",
             "values": {"accuracy": 0.0 if n not in failed else 0.125, "steps": 20}}
            for n in names]


def robust_metrics(clean: float, robust: float, failed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The shape of ``eval robust``'s metrics.json."""
    return {
        "suite": "quick", "threat": {"norm": "linf", "eps": 0.1}, "n": 100,
        "clean_accuracy": clean, "robust_accuracy": robust, "reliable": not failed,
        "eot": 1, "seconds": 33.44009249100009,
        "attacks": {
            "apgd-ce": {"attack": {"attack": "apgd", "eps": 0.1, "steps": 100},
                        "n": 100, "clean_accuracy": clean, "robust_accuracy": robust + 0.07,
                        "success_rate": 0.7796610169491526, "l2_median": 0.681106686592102,
                        "summary": "apgd: clean accuracy 59.00%, robust accuracy 13.00% of 100; "
                                   "attacked 59: success 78.0% of 59", "masked": True},
            "apgd-t": {"attack": {"attack": "apgd-t", "eps": 0.1, "n_target_classes": 3},
                       "n": 100, "clean_accuracy": clean, "robust_accuracy": robust,
                       "success_rate": 0.5384615384615384, "l2_median": 0.6524829268455505,
                       "masked": False}},
        "robust_accuracy_after": {"apgd-ce": robust + 0.07, "apgd-t": robust},
        "minimal": {"n": 100, "accuracy_at_eps": {"0.05": 0.4, "0.1": 0.2},
                    "curve": {"attack": "deepfool", "eps": [0.0, 0.05, 0.1],
                              "accuracy": [clean, 0.4, 0.2]}},
        "rho2": None, "eps_ref": {"eps": 0.105, "accuracy": 0.5},
        "checks": checks(failed), "source_run": "runs/train", "dataset": "digits",
        "split": "test", "versions": VERSIONS}


def robust_config(source_run: str, eps: float = 0.1) -> dict[str, Any]:
    return {"command": "eval robust", "source_run": source_run, "dataset": "digits",
            "split": "test", "n": 100, "seed": 0, "norm": "linf", "eps": eps,
            "suite": "quick", "eps_list": None}


VERDICTS = {
    "recipe": {"name": "madry-digits", "source": "Madry et al. 2018, Table 2 <adapted>"},
    "verdicts": [
        {"quantity": "clean accuracy", "source": 0.985, "advlab": 0.9777158498764038,
         "tolerance": 0.01, "within": True},
        {"quantity": "robust accuracy, PGD-40 eps=0.3", "source": 0.89,
         "advlab": 0.8123456789, "tolerance": 0.03, "within": False, "note": "fewer steps"},
        {"quantity": "epsilon_ref", "source": "about 0.1", "advlab": 0.105,
         "tolerance": None, "within": None}]}


def demo_tree(root: Path) -> Path:
    """A run directory holding sub-runs, as ``advlab demo`` writes it."""
    demo = make_run(root / "demo-20260101-000000", {"command": "demo", "device": "cpu",
                                                    "quick": True},
                    {"classifier": {"test_acc": 0.97, "run": "x"},
                     "attacks": {"n": 100, "clean_accuracy": 0.97, "eps": 0.1,
                                 "attacks": {"fgsm": {"robust_accuracy": 0.5},
                                             "pgd": {"robust_accuracy": 0.4}}}})
    make_run(demo / "classifier", train_config("lenet5"), train_metrics(0.97),
             {"learning_curves.png": png(4, 3)})
    make_run(demo / "attacks", None,
             {"n": 100, "clean_accuracy": 0.97, "eps": 0.1,
              "attacks": {"fgsm": {"robust_accuracy": 0.5, "l2_median": 0.67},
                          "pgd": {"robust_accuracy": 0.4, "l2_median": 0.55}},
              "checks": checks(), "reliable": True},
             {"pgd_grid.png": png(5, 2, (10, 200, 10))})
    make_run(demo / "generative" / "vae",
             {"command": "train generative", "dataset": "digits", "model": "vae"},
             {"test_negative_elbo": 25.6, "versions": VERSIONS},
             {"samples.png": png(2, 2, (0, 0, 255))})
    return demo


# --- reading a report back ------------------------------------------------------------------------

class ReportParser(HTMLParser):
    """Collects, from a report: every number (its run, data-path, data-value), every URL
    attribute, the tags used and the images."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.runs: list[str] = []  # the data-run of the open run sections
        self.depth: list[str] = []  # tags open
        self.numbers: list[tuple[str, str, str]] = []  # (run, data-path, data-value)
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.tags: set[str] = set()
        self.images: list[str] = []  # src of each img
        self.meta: list[dict[str, str]] = []
        self.sections: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "section" and "run" in a.get("class", "").split():
            self.runs.append(a["data-run"])
            self.sections.append(a["data-run"])
        elif tag == "section":
            self.runs.append(self.runs[-1] if self.runs else "")
        if tag not in ("meta", "img", "br", "link", "input"):
            self.depth.append(tag)
        if "data-path" in a:
            self.numbers.append((self.runs[-1], a["data-path"], a["data-value"]))
        for attr in ("src", "href", "action", "srcset", "poster", "data"):
            if attr in a:
                self.urls.append((tag, attr, a[attr]))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "meta":
            self.meta.append(a)

    def handle_endtag(self, tag):
        if tag == "section":
            self.runs.pop()
        while self.depth and self.depth.pop() != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)


def parse_report(text: str) -> ReportParser:
    p = ReportParser()
    p.feed(text)
    p.close()
    return p


def number_pointers(doc: Any, path: str = "") -> dict[str, float]:
    """Every number (not a boolean) in the JSON document, by JSON Pointer."""
    out: dict[str, float] = {}
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.update(number_pointers(v, f"{path}/{k.replace('~', '~0').replace('/', '~1')}"))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.update(number_pointers(v, f"{path}/{i}"))
    elif isinstance(doc, (int, float)) and not isinstance(doc, bool):
        out[path] = doc
    return out
