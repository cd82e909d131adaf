"""The ``cifar10-jpeg`` data set: CIFAR-10 as JPEG files, from a zip or a folder, cached.

Small synthetic copies are written by the tests: each image is one flat colour that encodes its
class and its index, so the order, the labels and the channel layout can be read back from the
decoded pixels; exact pixels are checked against Pillow decoding the same bytes.
"""

from __future__ import annotations

import io
import os
import random
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from advlab import data, models
from advlab.cli.main import app
from advlab.data import DataError, DatasetNotFoundError, jpeg
from advlab.data.base import CIFAR10_CLASSES
from advlab.data.resources import OFFICIAL_SIZES

REAL_DATA = os.environ.get("ADVLAB_DATA", "").strip()  # captured before _isolated removes it
TITLE = "CIFAR-10 (JPEG re-encoding)"
PER_CLASS = {"train": 3, "test": 2}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No real data dir, a private cache dir, and no --data-dir left over from another test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("ADVLAB_DATA", raising=False)
    data.set_data_dir(None)
    yield
    data.set_data_dir(None)


def colour(label: int, i: int) -> tuple[int, int, int]:
    """The flat RGB colour of image ``i`` of class ``label`` (distinct per image and channel)."""
    return 20 + 20 * label, 40 + 60 * i, 230 - 15 * label


def encode(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def flat(rgb, size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (size, size, 3)).copy()


def tree(per_class=PER_CLASS) -> dict[str, bytes]:
    """``{"train/cat/0001.jpg": bytes, ...}``: every class of both splits, flat colours."""
    return {f"{split}/{c}/{i:04d}.jpg": encode(flat(colour(k, i)))
            for split, n in per_class.items() for k, c in enumerate(CIFAR10_CLASSES)
            for i in range(n)}


def write_zip(root, files: dict[str, bytes], prefix: str = "", seed: int = 0):
    """``<root>/cifar10-jpeg/cifar10-jpeg.zip`` stored (as the real one), members shuffled."""
    path = root / "cifar10-jpeg" / "cifar10-jpeg.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(files)
    random.Random(seed).shuffle(names)  # the order comes from the names, not the zip
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in names:
            zf.writestr(prefix + name, files[name])
    return path


def write_folder(root, files: dict[str, bytes]):
    top = root / "cifar10-jpeg"
    for name, raw in files.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(raw)
    return top


def expected(files: dict[str, bytes], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """What the loader must return, from Pillow's decoding of each file (names sorted)."""
    names = sorted(n for n in files if n.startswith(split + "/"))
    names.sort(key=lambda n: CIFAR10_CLASSES.index(n.split("/")[1]))  # stable: by class
    x = np.stack([np.asarray(Image.open(io.BytesIO(files[n])).convert("RGB")) for n in names])
    y = [CIFAR10_CLASSES.index(n.split("/")[1]) for n in names]
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255,
            torch.tensor(y, dtype=torch.int64))


# ------------------------------------------------------------------------------- catalog

def test_catalog_entry_title_and_family():
    assert "cifar10-jpeg" in data.available()
    i = data.info("cifar10-jpeg")
    assert (i.shape, i.classes, i.kind) == (data.info("cifar10").shape, CIFAR10_CLASSES, "image")
    assert i.title == TITLE and i.family == "cifar10"
    assert i.local_only and not i.needs_download
    assert data.info("cifar10").title == "CIFAR-10" and data.info("ring8").title == "ring8"
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0, res.output
    assert "cifar10-jpeg" in res.output


def test_cifar_models_take_it_with_the_cifar10_defaults():
    for name in ("cifar-cnn", "resnet-small"):
        jpg, official = models.create(name, "cifar10-jpeg"), models.create(name, "cifar10")
        assert jpg.spec["dataset"] == "cifar10-jpeg"
        assert jpg.spec["kwargs"] == official.spec["kwargs"]  # same shape, same normalization
        assert jpg.spec["kwargs"]["normalize"] is True
        assert models.from_spec(jpg.spec).spec == jpg.spec
        assert jpg(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# ------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("split", ["train", "test"])
def test_zip_loads_shapes_labels_and_order(tmp_path, split):
    files = tree()
    write_zip(tmp_path, files)
    ds = data.load("cifar10-jpeg", split, root=tmp_path)
    n = PER_CLASS[split]
    assert ds.x.shape == (10 * n, 3, 32, 32) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.info.title == TITLE and ds.split == split
    assert ds.y.tolist() == [k for k in range(10) for _ in range(n)]
    x, y = expected(files, split)
    assert torch.equal(ds.x, x) and torch.equal(ds.y, y)
    # the flat colours come back per channel in (C, H, W), within JPEG's error
    want = torch.tensor([colour(k, i) for k in range(10) for i in range(n)]) / 255
    assert (ds.x.mean((2, 3)) - want).abs().max() < 3 / 255


def test_folder_loads_the_same_as_the_zip(tmp_path):
    files = tree()
    write_zip(tmp_path / "z", files)
    write_folder(tmp_path / "f", files)
    for split in ("train", "test"):
        a = data.load("cifar10-jpeg", split, root=tmp_path / "z")
        b = data.load("cifar10-jpeg", split, root=tmp_path / "f")
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_a_zip_under_one_top_folder_and_numeric_names(tmp_path):
    files = tree({"train": 1, "test": 1})
    files["test/cat/10.jpg"] = encode(flat((1, 2, 3)))
    files["test/cat/2.jpg"] = encode(flat((200, 100, 50)))
    files["test/.DS_Store"] = b"tool litter"
    write_zip(tmp_path, files, prefix="CIFAR-10-images/")
    ds = data.load("cifar10-jpeg", "test", root=tmp_path)
    cats = ds.x[ds.y == 3].mean((2, 3)) * 255  # 0000.jpg, then 2.jpg, then 10.jpg
    assert cats.shape == (3, 3)
    assert (cats[1] - torch.tensor([200, 100, 50])).abs().max() < 3
    assert (cats[2] - torch.tensor([1, 2, 3])).abs().max() < 3


def test_the_data_dir_is_searched_and_n_is_refused(tmp_path, monkeypatch):
    write_zip(tmp_path / "env", tree())
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "env"))
    assert len(data.load("cifar10-jpeg", "test")) == 20
    with pytest.raises(ValueError, match="n= is only for generated"):
        data.load("cifar10-jpeg", "test", n=5)


# ------------------------------------------------------------------------------- cache

def _no_decoding(*args):
    raise AssertionError("decoded again despite a valid cache entry")


def test_decoded_once_then_cached_until_the_zip_changes(tmp_path, monkeypatch):
    files = tree()
    path = write_zip(tmp_path, files)
    first = data.load("cifar10-jpeg", "train", root=tmp_path)
    assert len(list((tmp_path / "xdg-cache" / "advlab" / "decoded").glob("cifar10-jpeg-*")))
    with monkeypatch.context() as m:
        m.setattr(jpeg, "decode", _no_decoding)
        assert torch.equal(data.load("cifar10-jpeg", "train", root=tmp_path).x, first.x)
    # two images of one size swapped: same zip size, same mtime; only the CRCs tell
    a, b = "train/dog/0001.jpg", "train/dog/0002.jpg"
    assert len(files[a]) == len(files[b]) and files[a] != files[b]
    files[a], files[b] = files[b], files[a]
    stat = path.stat()
    write_zip(tmp_path, files)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    again = data.load("cifar10-jpeg", "train", root=tmp_path)
    changed = (again.x != first.x).flatten(1).any(1)
    assert changed.nonzero().flatten().tolist() == [5 * 3 + 1, 5 * 3 + 2]
    assert torch.equal(again.x, expected(files, "train")[0])


def test_folder_cache_misses_when_a_file_changes(tmp_path, monkeypatch):
    files = tree()
    top = write_folder(tmp_path, files)
    first = data.load("cifar10-jpeg", "test", root=tmp_path)
    with monkeypatch.context() as m:
        m.setattr(jpeg, "decode", _no_decoding)
        data.load("cifar10-jpeg", "test", root=tmp_path)
    # a file rewritten with other pixels of the same size: its modification time tells
    target, other = top / "test" / "ship" / "0000.jpg", files["test/dog/0000.jpg"]
    stat = target.stat()
    assert stat.st_size == len(other)
    target.write_bytes(other)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = data.load("cifar10-jpeg", "test", root=tmp_path)
    assert (again.x != first.x).flatten(1).any(1).nonzero().flatten().tolist() == [8 * 2]


# ------------------------------------------------------------------------------- not found

def test_missing_set_is_one_line_naming_the_expected_paths(tmp_path):
    for download in (False, True):
        with pytest.raises(DatasetNotFoundError) as err:
            data.load("cifar10-jpeg", "train", root=tmp_path, download=download)
        msg = str(err.value)
        assert "\n" not in msg
        assert str(tmp_path / "cifar10-jpeg" / "cifar10-jpeg.zip") in msg
        assert str(tmp_path / "cifar10-jpeg" / "train") in msg
        assert "re-encoding" in msg and "no official download" in msg


def test_prepare_says_it_cannot_be_downloaded_or_checks_the_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVLAB_DATA", str(tmp_path / "d"))
    res = runner.invoke(app, ["data", "prepare", "cifar10-jpeg"])
    out = " ".join(res.output.split())
    assert res.exit_code != 0
    assert "local JPEG re-encoding of CIFAR-10 with no official download" in out
    assert str(tmp_path / "d" / "cifar10-jpeg" / "cifar10-jpeg.zip") in res.output
    path = write_zip(tmp_path / "d", tree())
    assert data.prepare("cifar10-jpeg") == path  # found, both splits decoded into the cache
    assert len(list((tmp_path / "xdg-cache" / "advlab" / "decoded").glob("cifar10-jpeg-*"))) == 2
    res = runner.invoke(app, ["data", "info", "cifar10-jpeg"])
    assert res.exit_code == 0, res.output
    assert f"cifar10-jpeg ({TITLE})" in " ".join(res.output.split())


# ------------------------------------------------------------------------------- bad copies

def test_truncated_or_corrupt_zip(tmp_path):
    path = write_zip(tmp_path, tree())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="not a readable zip file"):
        data.load("cifar10-jpeg", "test", root=tmp_path)
    # a flipped byte inside one stored member: its CRC-32 fails, the member is named
    path = write_zip(tmp_path, tree())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("test/bird/0001.jpg")
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="member test/bird/0001.jpg") as err:
        data.load("cifar10-jpeg", "test", root=tmp_path)
    assert "CRC" in str(err.value)


@pytest.mark.parametrize("layout", ["zip", "folder"])
def test_missing_class_folder(tmp_path, layout):
    files = {k: v for k, v in tree().items() if not k.startswith("test/deer/")}
    (write_zip if layout == "zip" else write_folder)(tmp_path, files)
    with pytest.raises(DataError, match="missing or empty: deer"):
        data.load("cifar10-jpeg", "test", root=tmp_path)
    assert len(data.load("cifar10-jpeg", "train", root=tmp_path)) == 30  # the other split


def test_a_zip_without_the_split(tmp_path):
    write_zip(tmp_path, {k: v for k, v in tree().items() if k.startswith("train/")})
    with pytest.raises(DataError, match="found no test/ folder"):
        data.load("cifar10-jpeg", "test", root=tmp_path)


@pytest.mark.parametrize("layout", ["zip", "folder"])
@pytest.mark.parametrize("name, raw, match", [
    ("test/frog/0001.jpg", encode(flat((1, 2, 3), size=16)), "expected a 32x32 image, got 16x16"),
    ("test/frog/0001.jpg", b"\xff\xd8\xff\xe0 not really a JPEG", "not a readable JPEG"),
    ("test/frog/0001.jpg", encode(flat((1, 2, 3)))[:300], "not a readable JPEG"),  # truncated
    ("test/frog/0001.jpg", encode(flat((1, 2, 3)), fmt="PNG"), "not a readable JPEG"),
    ("test/frogs/0000.jpg", encode(flat((1, 2, 3))), "expected a class folder .* got frogs/"),
    ("test/frog/notes.txt", b"hello", r"expected JPEG files \(.jpg, .jpeg\), got test/frog/"),
    ("test/0000.jpg", encode(flat((1, 2, 3))), "expected test/<class>/<image>.jpg, got test/0"),
])
def test_bad_member_is_named(tmp_path, layout, name, raw, match):
    files = tree()
    files[name] = raw
    (write_zip if layout == "zip" else write_folder)(tmp_path, files)
    with pytest.raises(DataError, match=match) as err:
        data.load("cifar10-jpeg", "test", root=tmp_path)
    assert name.split("/", 1)[1] in str(err.value) or name in str(err.value)


def test_an_oversized_member_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(jpeg, "MAX_IMAGE_BYTES", 100)
    write_zip(tmp_path, tree())
    with pytest.raises(DataError, match="declares .* bytes, expected a JPEG file of at most 100"):
        data.load("cifar10-jpeg", "test", root=tmp_path)


# ------------------------------------------------------------------------------- the real set

@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA or not os.path.isfile(
    os.path.join(REAL_DATA, "cifar10-jpeg", "cifar10-jpeg.zip")),
    reason="needs cifar10-jpeg/cifar10-jpeg.zip under ADVLAB_DATA")
def test_real_set_has_the_official_split():
    for split, per_class in (("train", 5000), ("test", 1000)):
        ds = data.load("cifar10-jpeg", split, root=REAL_DATA)
        assert len(ds) == OFFICIAL_SIZES["cifar10-jpeg"][split] == 10 * per_class
        assert ds.x.shape[1:] == (3, 32, 32) and ds.x.dtype == torch.float32
        assert ds.y.bincount(minlength=10).tolist() == [per_class] * 10
        assert 0 <= float(ds.x.min()) and float(ds.x.max()) <= 1
        mean = ds.x.mean((0, 2, 3))  # close to the official training set's channel means
        official = torch.tensor(models.NORMALIZATION_STATS["cifar10"][0])
        assert split == "test" or (mean - official).abs().max() < 0.005
