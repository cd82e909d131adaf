"""advlab.data: loading by name, source resolution, downloads, generated sets, splits."""

from __future__ import annotations

import hashlib
import math
import os
import tarfile
import time

import numpy as np
import pytest
import torch

from advlab import data
from advlab.data import DataError, DatasetNotFoundError
from advlab.data.cifar import write_batch, write_meta
from advlab.data.idx import write_idx
from advlab.data.resources import DOWNLOADS, Resource

# Captured before the isolation fixture removes it from the environment.
REAL_DATA = os.environ.get("ADVLAB_DATA", "").strip()
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SIZES = {"train": 30, "test": 20}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No real data dir, a private cache dir, and no --data-dir left over from another test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("ADVLAB_DATA", raising=False)
    data.set_data_dir(None)
    yield
    data.set_data_dir(None)


def fake_idx(directory, *, n=SIZES, seed=0, gz=True, label_offset=0):
    """Write a small MNIST-like set (both splits) into ``directory``; return its arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (img_name, lab_name) in IDX_NAMES.items():
        images = rng.integers(0, 256, (n[split], 28, 28), dtype=np.uint8)
        labels = ((np.arange(n[split]) + label_offset) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(directory / (img_name + suffix), images)
        write_idx(directory / (lab_name + suffix), labels)
        arrays[split] = (images, labels)
    return arrays


def fake_cifar(directory, rows=4, seed=0):
    """Write small CIFAR-10 batches (rows per batch, as batches.meta says) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (rows, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, rows)
        write_batch(directory / name, images, labels)
        arrays[name] = (images, labels)
    write_meta(directory / "batches.meta", rows)
    return arrays


# -------------------------------------------------------------------------------- names, info

def test_available_names_and_info():
    assert data.available() == ["mnist", "fashion-mnist", "cifar10", "cifar10-jpeg", "digits",
                                "ring8", "grid25"]
    assert data.info("cifar10").shape == (3, 32, 32)
    with pytest.raises(ValueError, match="Did you mean 'mnist'"):
        data.load("mnsit")


def test_bad_split_and_misplaced_n():
    with pytest.raises(ValueError, match="expected split 'train' or 'test', got 'val'"):
        data.load("digits", split="val")
    with pytest.raises(ValueError, match="n= is only for generated data sets"):
        data.load("digits", n=10)


# -------------------------------------------------------------------------- IDX data sets

@pytest.mark.parametrize(("name", "rel", "gz"), [
    ("mnist", "mnist", True),
    ("mnist", "mnist", False),
    ("mnist", "MNIST/raw", True),
    ("mnist", "MNIST/raw", False),
    ("fashion-mnist", "fashion-mnist", True),
    ("fashion-mnist", "FashionMNIST/raw", False),
])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_layouts_load_exact_values(tmp_path, name, rel, gz, split):
    arrays = fake_idx(tmp_path / "root" / rel, gz=gz)
    ds = data.load(name, split, root=tmp_path / "root")
    images, labels = arrays[split]
    assert ds.x.shape == (SIZES[split], 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    torch.testing.assert_close(ds.x, torch.from_numpy(images).float().unsqueeze(1) / 255.0,
                               rtol=0, atol=0)
    assert ds.y.tolist() == labels.tolist()
    assert ds.info.name == name and ds.split == split
    assert ds.classes == data.info(name).classes


def test_raw_and_gzip_copies_agree(tmp_path):
    fake_idx(tmp_path / "a" / "mnist", gz=True)
    fake_idx(tmp_path / "b" / "mnist", gz=False)
    a, b = data.load("mnist", root=tmp_path / "a"), data.load("mnist", root=tmp_path / "b")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_loading_never_writes_into_the_data_root(tmp_path):
    fake_idx(tmp_path / "root" / "mnist")
    before = sorted(p for p in (tmp_path / "root").rglob("*"))
    data.load("mnist", root=tmp_path / "root")
    data.load("mnist", root=tmp_path / "root")  # a cache hit
    assert sorted(p for p in (tmp_path / "root").rglob("*")) == before
    assert any((tmp_path / "xdg-cache" / "advlab" / "decoded").glob("*.npy"))


def test_count_mismatch_between_images_and_labels(tmp_path):
    d = tmp_path / "mnist"
    fake_idx(d)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="holds 30 images but .* holds 29 labels"):
        data.load("mnist", root=tmp_path)


def test_label_out_of_range(tmp_path):
    d = tmp_path / "mnist"
    fake_idx(d)
    labels = np.zeros(30, np.uint8)
    labels[7] = 10
    write_idx(d / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match="label 10 at index 7 is out of range 0..9"):
        data.load("mnist", root=tmp_path)


def test_wrong_image_size(tmp_path):
    d = tmp_path / "mnist"
    fake_idx(d)
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"expected images of size \(28, 28\)"):
        data.load("mnist", root=tmp_path)


def test_corrupt_file_never_gives_a_partial_set(tmp_path):
    d = tmp_path / "mnist"
    fake_idx(d, gz=False)
    path = d / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-784])  # one image short
    with pytest.raises(DataError, match="truncated"):
        data.load("mnist", root=tmp_path)


# --------------------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("rel", ["cifar10/cifar-10-batches-py", "cifar10", "cifar-10-batches-py"])
def test_cifar_layouts_and_pixel_order(tmp_path, rel):
    arrays = fake_cifar(tmp_path / rel)
    train = data.load("cifar10", "train", root=tmp_path)
    test = data.load("cifar10", "test", root=tmp_path)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    images, labels = arrays["data_batch_2"]
    # Row r of batch 2 is example 4 + r; the stored row is 1024 R, 1024 G, 1024 B values.
    row = images[1].reshape(-1)
    assert torch.equal(train.x[5, 0].reshape(-1), torch.from_numpy(row[:1024]).float() / 255)
    assert torch.equal(train.x[5, 2].reshape(-1), torch.from_numpy(row[2048:]).float() / 255)
    assert train.y[4:8].tolist() == labels.tolist()
    assert test.y.tolist() == arrays["test_batch"][1].tolist()


def test_cifar_missing_batch_is_not_found(tmp_path):
    fake_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing data_batch_3"):
        data.load("cifar10", "train", root=tmp_path)
    assert data.load("cifar10", "test", root=tmp_path).x.shape == (4, 3, 32, 32)


# ------------------------------------------------------------------------------ where to look

def _roots(tmp_path):
    """Four roots, each holding MNIST of a different train size (so we can tell them apart)."""
    sizes = {"root": 11, "set": 12, "env": 13, "cache": 14}
    for key, n in sizes.items():
        base = tmp_path / "xdg-cache" / "advlab" if key == "cache" else tmp_path / key
        fake_idx(base / "mnist", n={"train": n, "test": 5})
    return sizes


def test_resolution_order(tmp_path, monkeypatch):
    sizes = _roots(tmp_path)
    assert len(data.load("mnist")) == sizes["cache"]
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    assert len(data.load("mnist")) == sizes["env"]
    data.set_data_dir(tmp_path / "set")
    assert len(data.load("mnist")) == sizes["set"]  # --data-dir beats ADVLAB_DATA
    assert len(data.load("mnist", root=tmp_path / "root")) == sizes["root"]
    data.set_data_dir(None)
    assert len(data.load("mnist")) == sizes["env"]


def test_relative_env_path_is_taken_from_the_working_directory(tmp_path, monkeypatch):
    fake_idx(tmp_path / "shared" / "data" / "mnist", n={"train": 9, "test": 5})
    (tmp_path / "main").mkdir()
    monkeypatch.chdir(tmp_path / "main")
    monkeypatch.setenv("ADVLAB_DATA", "../shared/data")
    assert len(data.load("mnist")) == 9


def test_data_dir_without_the_set_falls_back_to_the_cache(tmp_path, monkeypatch):
    fake_idx(tmp_path / "xdg-cache" / "advlab" / "mnist", n={"train": 8, "test": 5})
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    assert len(data.load("mnist")) == 8


def test_explicit_root_is_the_only_place_searched(tmp_path, monkeypatch):
    fake_idx(tmp_path / "env" / "mnist")
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        data.load("mnist", root=tmp_path / "empty")
    assert str(tmp_path / "env") not in str(err.value)


def test_not_found_names_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    (tmp_path / "env" / "mnist").mkdir(parents=True)
    write_idx(tmp_path / "env" / "mnist" / "train-images-idx3-ubyte.gz",
              np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetNotFoundError) as err:
        data.load("mnist")
    msg = str(err.value)
    for place in [tmp_path / "env" / "mnist", tmp_path / "env" / "MNIST" / "raw",
                  tmp_path / "xdg-cache" / "advlab" / "mnist",
                  tmp_path / "xdg-cache" / "advlab" / "MNIST" / "raw"]:
        assert str(place) in msg
    assert "missing train-labels-idx1-ubyte[.gz]" in msg
    assert "advlab data prepare mnist" in msg and "download=True" in msg
    assert isinstance(err.value, FileNotFoundError)


# ------------------------------------------------------------------------------------ download

@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """Serve fake MNIST downloads from a file:// mirror; DOWNLOADS points at it."""
    server = tmp_path / "server"
    arrays = fake_idx(server)
    entries = {}
    for stem in DOWNLOADS["mnist"]:
        blob = (server / f"{stem}.gz").read_bytes()
        entries[stem] = Resource(f"{stem}.gz", (server.as_uri() + "/",),
                                 hashlib.md5(blob).hexdigest())
    monkeypatch.setitem(DOWNLOADS, "mnist", entries)
    return arrays


def test_prepare_downloads_then_load_works_offline(tmp_path, mirror):
    target = data.prepare("mnist", root=tmp_path / "dl")
    assert target == tmp_path / "dl" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{s}.gz" for s in DOWNLOADS["mnist"])
    ds = data.load("mnist", "test", root=tmp_path / "dl")
    assert ds.y.tolist() == mirror["test"][1].tolist()


def test_prepare_defaults_to_the_data_dir_then_the_cache(tmp_path, mirror, monkeypatch):
    assert data.prepare("mnist") == tmp_path / "xdg-cache" / "advlab" / "mnist"
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    assert data.prepare("mnist") == tmp_path / "env" / "mnist"


def test_load_download_true_fetches_only_when_missing(tmp_path, mirror, monkeypatch):
    ds = data.load("mnist", root=tmp_path / "dl", download=True)
    assert len(ds) == SIZES["train"]
    from advlab.data import fetch

    def no_network(*a, **k):
        raise AssertionError("network used although the files are present")

    monkeypatch.setattr(fetch, "urlopen", no_network)
    assert len(data.load("mnist", root=tmp_path / "dl", download=True)) == SIZES["train"]
    assert data.prepare("mnist", root=tmp_path / "dl") == tmp_path / "dl" / "mnist"


def test_prepare_checksum_mismatch_leaves_no_file(tmp_path, mirror, monkeypatch):
    bad = {stem: Resource(r.filename, r.mirrors, "0" * 32)
           for stem, r in DOWNLOADS["mnist"].items()}
    monkeypatch.setitem(DOWNLOADS, "mnist", bad)
    with pytest.raises(DataError, match="md5 mismatch"):
        data.prepare("mnist", root=tmp_path / "dl")
    assert list((tmp_path / "dl" / "mnist").iterdir()) == []


def test_without_download_the_network_is_never_used(tmp_path, monkeypatch):
    from advlab.data import fetch

    def no_network(*a, **k):
        raise AssertionError("network used without download=True")

    monkeypatch.setattr(fetch, "urlopen", no_network)
    with pytest.raises(DatasetNotFoundError):
        data.load("mnist")


def _cifar_tarball(tmp_path, extra=None):
    src = tmp_path / "src"
    arrays = fake_cifar(src / "cifar-10-batches-py", rows=3)
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        if extra is not None:
            tar.addfile(extra)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    res = Resource("cifar-10-python.tar.gz", (archive.parent.as_uri() + "/",), md5)
    return arrays, res


def test_prepare_cifar_downloads_and_extracts(tmp_path, monkeypatch):
    arrays, res = _cifar_tarball(tmp_path)
    monkeypatch.setitem(DOWNLOADS, "cifar10", {res.filename: res})
    final = data.prepare("cifar10", root=tmp_path / "dl")
    assert final == tmp_path / "dl" / "cifar10" / "cifar-10-batches-py"
    ds = data.load("cifar10", "test", root=tmp_path / "dl")
    assert ds.y.tolist() == arrays["test_batch"][1].tolist()
    assert sorted(p.name for p in (tmp_path / "dl" / "cifar10").iterdir()) == [
        "cifar-10-batches-py", "cifar-10-python.tar.gz"]


def test_prepare_cifar_refuses_a_malicious_archive(tmp_path, monkeypatch):
    evil = tarfile.TarInfo("../../evil")
    _, res = _cifar_tarball(tmp_path, extra=evil)
    monkeypatch.setitem(DOWNLOADS, "cifar10", {res.filename: res})
    with pytest.raises(DataError, match="refusing member '../../evil'"):
        data.prepare("cifar10", root=tmp_path / "dl")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "dl" / "evil").exists()
    assert sorted(p.name for p in (tmp_path / "dl" / "cifar10").iterdir()) == [
        "cifar-10-python.tar.gz"]  # no extracted directory, no staging leftovers


def test_prepare_keeps_a_complete_copy_in_any_layout(tmp_path, monkeypatch):
    from advlab.data import fetch

    def no_network(*a, **k):
        raise AssertionError("network used although a complete copy exists")

    monkeypatch.setattr(fetch, "urlopen", no_network)
    fake_idx(tmp_path / "root" / "MNIST" / "raw", gz=False)
    assert data.prepare("mnist", root=tmp_path / "root") == tmp_path / "root" / "MNIST" / "raw"
    fake_cifar(tmp_path / "root" / "cifar-10-batches-py")
    assert data.prepare("cifar10", root=tmp_path / "root") == (
        tmp_path / "root" / "cifar-10-batches-py")


def test_prepare_reports_an_invalid_local_file_and_keeps_it(tmp_path, mirror):
    target = tmp_path / "dl" / "mnist"
    target.mkdir(parents=True)
    bad = target / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(DataError, match="corrupt gzip.*remove it and run prepare again"):
        data.prepare("mnist", root=tmp_path / "dl")
    assert bad.read_bytes() == b"\x1f\x8bnot really gzip"


def test_prepare_is_a_no_op_for_bundled_and_generated_sets(tmp_path):
    for name in ("digits", "ring8", "grid25"):
        assert data.prepare(name, root=tmp_path / "x") is None
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------------------------- digits

def test_digits_split_is_stratified_disjoint_and_complete():
    from sklearn.datasets import load_digits

    full = load_digits()
    train, test = data.load("digits", "train"), data.load("digits", "test")
    assert train.x.shape == (1438, 1, 8, 8) and test.x.shape == (359, 1, 8, 8)
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    counts = np.bincount(full.target, minlength=10)
    assert test.y.bincount(minlength=10).tolist() == np.round(0.2 * counts).astype(int).tolist()
    both = torch.cat([train.x, test.x]).reshape(-1, 64) * 16
    ref = torch.from_numpy(full.data.astype(np.float32))
    key = lambda t: sorted(map(tuple, t.round().long().tolist()))  # noqa: E731
    assert key(both) == key(ref)  # the two splits are a partition of the 1797 images
    again = data.load("digits", "test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)


# ---------------------------------------------------------------------------- ring8 / grid25

def test_toy_modes_geometry():
    ring, ring_sigma = data.toy_modes("ring8")
    assert ring.shape == (8, 2) and ring_sigma == 0.01
    torch.testing.assert_close(ring.norm(dim=1), torch.ones(8))
    angles = torch.atan2(ring[:, 1], ring[:, 0]) % (2 * math.pi)
    torch.testing.assert_close(angles, torch.arange(8) * (math.pi / 4), atol=1e-6, rtol=0)
    grid, grid_sigma = data.toy_modes("grid25")
    assert grid.shape == (25, 2) and grid_sigma == 0.05
    assert sorted(set(grid[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert torch.equal(grid[5 * 1 + 3], torch.tensor([-2.0, 2.0]))
    with pytest.raises(ValueError, match="Valid datasets"):
        data.toy_modes("ring9")


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_toy_points_follow_the_mixture(name):
    centers, sigma = data.toy_modes(name)
    ds = data.load(name, "train")
    assert ds.x.shape == (100_000, 2) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and len(data.load(name, "test")) == 10_000
    k = len(centers)
    counts = ds.y.bincount(minlength=k).double()
    assert counts.min() > 0
    # Uniform weights: every count within 5 binomial standard deviations of n/k.
    n = len(ds)
    assert (counts - n / k).abs().max() < 5 * math.sqrt(n / k * (1 - 1 / k))
    offset = ds.x - centers[ds.y]
    assert offset.abs().max() < 6 * sigma  # every point belongs to its own mode
    assert abs(offset.std().item() / sigma - 1) < 0.02
    assert offset.mean(0).abs().max() < 5 * sigma / math.sqrt(n)


def test_toy_sets_are_deterministic_and_splits_differ():
    a, b = data.load("ring8", "train", n=1000), data.load("ring8", "train", n=1000)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    test = data.load("ring8", "test", n=1000)
    assert not torch.equal(a.x, test.x)
    assert len(a) == 1000
    with pytest.raises(ValueError, match="positive number of points"):
        data.load("grid25", n=0)


# ------------------------------------------------------------------------------ split, subset

def _labelled(n=200, k=10):
    y = torch.arange(n) % k
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)  # x encodes the index
    return data.TensorSet(x, y, data.info("mnist"), "train")


def test_train_val_split_partitions_deterministically():
    ds = _labelled(200)
    train, val = data.train_val_split(ds, 0.1, seed=3)
    assert len(train) == 180 and len(val) == 20 and val.split == "val" and train.split == "train"
    idx = torch.cat([train.x.flatten(), val.x.flatten()]).long()
    assert sorted(idx.tolist()) == list(range(200))
    assert torch.equal(train.y, train.x.flatten().long() % 10)  # pairs kept together
    again = data.train_val_split(ds, 0.1, seed=3)[1]
    assert torch.equal(again.x, val.x)
    assert not torch.equal(data.train_val_split(ds, 0.1, seed=4)[1].x, val.x)


def test_train_val_split_stratified_counts():
    y = torch.cat([torch.zeros(50), torch.ones(30), torch.full((20,), 2)]).long()
    ds = data.TensorSet(torch.zeros(100, 1, 1, 1), y, data.info("mnist"), "train")
    _, val = data.train_val_split(ds, 0.2, seed=0, stratify=True)
    assert val.y.bincount(minlength=10)[:3].tolist() == [10, 6, 4]


def test_train_val_split_rejects_bad_fractions():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            data.train_val_split(_labelled(), bad)


def test_subset_random_and_balanced():
    ds = _labelled(200)
    sub = data.subset(ds, 37, seed=1)
    idx = sub.x.flatten().long()
    assert len(sub) == 37 and len(set(idx.tolist())) == 37
    assert torch.equal(idx, idx.sort().values)  # original order kept
    assert torch.equal(data.subset(ds, 37, seed=1).x, sub.x)
    bal = data.subset(ds, 50, seed=2, balanced=True)
    assert bal.y.bincount(minlength=10).tolist() == [5] * 10
    assert len(set(bal.x.flatten().long().tolist())) == 50
    assert torch.equal(bal.y, bal.x.flatten().long() % 10)
    assert not torch.equal(data.subset(ds, 50, seed=3, balanced=True).x, bal.x)


def test_subset_errors():
    ds = _labelled(200)
    with pytest.raises(ValueError, match="divisible"):
        data.subset(ds, 55, balanced=True)
    with pytest.raises(ValueError, match=r"expected n in 1..200"):
        data.subset(ds, 201)
    y = torch.cat([torch.zeros(50), torch.ones(3)]).long()
    short = data.TensorSet(torch.zeros(53, 1, 1, 1), y, data.info("mnist"), "train")
    with pytest.raises(ValueError, match=r"at least 5 examples of every class.*'1': 3"):
        data.subset(short, 50, balanced=True)


# ------------------------------------------------------------------------------------ real data

needs_real_data = pytest.mark.skipif(
    not REAL_DATA, reason="ADVLAB_DATA is not set: no real MNIST / Fashion-MNIST to test against")


@pytest.mark.realdata
@needs_real_data
def test_real_mnist(capsys):
    t0 = time.perf_counter()
    train = data.load("mnist", "train", root=REAL_DATA)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    train = data.load("mnist", "train", root=REAL_DATA)
    cached = time.perf_counter() - t0
    test = data.load("mnist", "test", root=REAL_DATA)
    with capsys.disabled():
        print(f"\nMNIST train load: cold {cold:.3f} s, cached {cached:.3f} s")
    assert train.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    assert train.y.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert test.y.bincount().tolist() == MNIST_TEST_COUNTS
    for ds in (train, test):
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0


@pytest.mark.realdata
@needs_real_data
def test_real_fashion_mnist():
    train = data.load("fashion-mnist", "train", root=REAL_DATA)
    test = data.load("fashion-mnist", "test", root=REAL_DATA)
    assert train.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    assert train.y.bincount().tolist() == [6000] * 10
    assert test.y.bincount().tolist() == [1000] * 10
    for ds in (train, test):
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert train.classes[9] == "Ankle boot"


@pytest.mark.realdata
@needs_real_data
def test_real_data_through_the_environment(monkeypatch):
    monkeypatch.setenv("ADVLAB_DATA", REAL_DATA)
    assert len(data.load("mnist", "test")) == 10_000


def test_prepare_reports_an_invalid_file_of_a_complete_copy_with_the_remedy(tmp_path, mirror):
    target = tmp_path / "dl" / "mnist"
    data.prepare("mnist", root=tmp_path / "dl")
    bad = target / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: all four files present, one broken
    with pytest.raises(DataError, match="train-images.*remove it and run prepare again"):
        data.prepare("mnist", root=tmp_path / "dl")
    assert len(bad.read_bytes()) == 200


# ------------------------------------------------------------ unreadable files, bad arguments

@pytest.fixture
def make_unreadable(monkeypatch):
    """``make_unreadable(path)``: chmod 000 ``path``. Where that does not stop reads (tests run
    as root), opening the file, or looking inside the directory, raises PermissionError."""
    import builtins
    import io
    import pathlib

    locked = []

    def lock(path):
        mode = path.stat().st_mode & 0o777
        path.chmod(0)
        locked.append((path, mode))
        if not os.access(path, os.R_OK):
            return  # chmod is enough (not root)
        denied = PermissionError(13, "Permission denied")
        if path.is_dir():
            real_stat = pathlib.Path.stat

            def stat(self, *args, **kwargs):
                if path in self.parents:
                    raise PermissionError(13, "Permission denied", str(self))
                return real_stat(self, *args, **kwargs)

            monkeypatch.setattr(pathlib.Path, "stat", stat)
        else:
            real_open = builtins.open

            def fake_open(file, *args, **kwargs):
                if isinstance(file, str | os.PathLike) and os.fspath(file) == str(path):
                    raise PermissionError(denied.errno, denied.strerror, str(file))
                return real_open(file, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", fake_open)
            monkeypatch.setattr(io, "open", fake_open)

    yield lock
    for path, mode in reversed(locked):
        path.chmod(mode)


@pytest.mark.parametrize("gz", [True, False])
def test_unreadable_data_file_is_a_data_error_naming_it(tmp_path, make_unreadable, gz):
    fake_idx(tmp_path / "root" / "mnist", gz=gz)
    path = tmp_path / "root" / "mnist" / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    make_unreadable(path)
    with pytest.raises(DataError) as err:
        data.load("mnist", "train", root=tmp_path / "root")
    assert str(err.value) == f"cannot read {path}: permission denied"
    assert len(data.load("mnist", "test", root=tmp_path / "root")) == SIZES["test"]


def test_unreadable_data_directory_is_a_data_error_naming_it(tmp_path, make_unreadable):
    fake_idx(tmp_path / "root" / "mnist")
    make_unreadable(tmp_path / "root" / "mnist")
    with pytest.raises(DataError, match="permission denied") as err:
        data.load("mnist", "test", root=tmp_path / "root")
    assert f"cannot read {tmp_path / 'root' / 'mnist'}" in str(err.value)


def test_unreadable_cifar_batch_is_a_data_error(tmp_path, make_unreadable):
    fake_cifar(tmp_path / "root" / "cifar-10-batches-py")
    batch = tmp_path / "root" / "cifar-10-batches-py" / "test_batch"
    make_unreadable(batch)
    with pytest.raises(DataError, match=f"cannot read {batch}: permission denied"):
        data.load("cifar10", "test", root=tmp_path / "root")


def test_prepare_reports_an_unreadable_file_without_telling_to_remove_it(
        tmp_path, mirror, make_unreadable):
    fake_idx(tmp_path / "dl" / "mnist")
    labels = tmp_path / "dl" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    make_unreadable(labels)
    with pytest.raises(DataError) as err:
        data.prepare("mnist", root=tmp_path / "dl")
    assert str(err.value) == f"cannot read {labels}: permission denied"


def test_io_errors_while_reading_are_data_errors(tmp_path, monkeypatch):
    import builtins
    import errno

    fake_idx(tmp_path / "root" / "mnist")
    real_open = builtins.open

    def failing_open(file, *args, **kwargs):
        if str(file).endswith("t10k-images-idx3-ubyte.gz"):
            raise OSError(errno.EIO, "Input/output error", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", failing_open)
    with pytest.raises(DataError, match="cannot read .*t10k-images-idx3-ubyte.gz: "
                                        "input/output error"):
        data.load("mnist", "test", root=tmp_path / "root")


@pytest.mark.parametrize("root", [5, 2.5, b"/tmp", ["/tmp"]])
def test_root_must_be_a_path(root):
    for name in ("mnist", "digits"):
        with pytest.raises(ValueError, match="root") as err:
            data.load(name, "test", root=root)
        assert repr(root) in str(err.value) and "str or os.PathLike" in str(err.value)
    with pytest.raises(ValueError, match="root"):
        data.prepare("mnist", root=root)
    with pytest.raises(ValueError, match="data directory"):
        data.set_data_dir(root)


@pytest.mark.parametrize("download", ["no", "yes", 0, 1, None])
def test_download_must_be_a_bool(download):
    with pytest.raises(ValueError, match="download") as err:
        data.load("digits", "test", download=download)
    assert repr(download) in str(err.value) and "bool" in str(err.value)


def test_generated_sets_are_capped():
    from advlab.data.toy import MAX_POINTS

    assert MAX_POINTS == 10**7
    for n in (10**10, MAX_POINTS + 1):
        with pytest.raises(ValueError, match=f"at most {MAX_POINTS:,}") as err:
            data.load("ring8", "test", n=n)
        assert f"got {n}" in str(err.value)
    for n in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="n"):
            data.load("grid25", "test", n=n)
    assert len(data.load("ring8", "test", n=3)) == 3


def _a_file(tmp_path):
    path = tmp_path / "not-a-dir"
    path.write_text("a file, not a data root")
    return path


def test_data_root_that_is_a_file_is_named(tmp_path, monkeypatch, mirror):
    file = _a_file(tmp_path)
    fake_idx(tmp_path / "xdg-cache" / "advlab" / "mnist")  # not used: the root is the problem
    expected = f"{file} is a file, expected a directory"
    data.set_data_dir(file)
    for call in (lambda: data.load("mnist"), lambda: data.prepare("mnist"),
                 lambda: data.load("mnist", download=True)):
        with pytest.raises(DataError) as err:
            call()
        assert str(err.value) == f"set_data_dir / --data-dir: {expected}"
    data.set_data_dir(None)
    monkeypatch.setenv("ADVLAB_DATA", str(file))
    with pytest.raises(DataError, match=f"ADVLAB_DATA: {expected}"):
        data.load("mnist", "test")
    with pytest.raises(DataError, match=f"ADVLAB_DATA: {expected}"):
        data.prepare("mnist")
    with pytest.raises(DataError, match=f"root argument: {expected}"):
        data.load("mnist", "test", root=file)
    with pytest.raises(DataError, match=f"root argument: {expected}"):
        data.prepare("cifar10", root=file)


def test_missing_data_root_is_named_in_the_not_found_message(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir"
    data.set_data_dir(missing)
    with pytest.raises(DatasetNotFoundError) as err:
        data.load("mnist", "test")
    msg = str(err.value)
    assert f"the data root {missing} (from set_data_dir / --data-dir) does not exist" in msg
    assert str(tmp_path / "xdg-cache" / "advlab" / "mnist") in msg  # still lists every place
    data.set_data_dir(None)
    monkeypatch.setenv("ADVLAB_DATA", str(missing))
    with pytest.raises(DatasetNotFoundError, match=r"data root .* \(from \$ADVLAB_DATA\) does "
                                                   "not exist"):
        data.load("mnist", "test")
    with pytest.raises(DatasetNotFoundError, match=r"\(from root argument\) does not exist"):
        data.load("cifar10", "test", root=missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        data.load("mnist", "test", root=tmp_path / "empty")
    assert "does not exist" not in str(err.value)
