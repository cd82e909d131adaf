"""Issue 16, item 10: a small untrusted file cannot make advlab allocate what it declares.

Every size read from a file is bounded by what the file (and its format) can hold before
anything of that size is allocated: CIFAR pickles, gzip IDX files (a gzip bomb), the decoded
cache, tar archives, and the architecture spec in a weights file (checked against the tensors
before the model is built).
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from numpy._core.multiarray import _reconstruct

from advlab.data import DataError, cache
from advlab.data.archive import safe_extract
from advlab.data.cifar import read_batch, restricted_load
from advlab.data.idx import encode_idx, read_idx

HUGE = 10**13  # elements: 9 TiB of uint8, far more than any machine holds


class _HugeArray:
    """Pickles as numpy's ndarray reconstruction with a declared shape of HUGE elements."""

    def __reduce__(self):
        return (_reconstruct, (np.ndarray, (HUGE,), b"B"), None)


def test_a_tiny_pickle_declaring_a_huge_array_is_refused(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": _HugeArray(), "labels": []}, protocol=4))
    assert path.stat().st_size < 200
    with pytest.raises(DataError, match=rf"{path}.*{HUGE}.*bytes"):
        read_batch(path)


class _HugeState:
    """numpy's own form: an empty array, then a state declaring HUGE elements of a dtype."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype

    def __reduce__(self):
        return (_reconstruct, (np.ndarray, (0,), b"B"),
                (1, (HUGE,), np.dtype(self.dtype), False, [] if self.dtype == "O" else b""))


@pytest.mark.parametrize("dtype", ["O", "u1"])
def test_a_pickled_array_state_declaring_a_huge_shape_is_refused(tmp_path, dtype):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({"data": _HugeState(dtype)}, protocol=4))
    with pytest.raises(DataError, match=rf"{path}"):
        restricted_load(path)


@pytest.mark.parametrize("opcode", [b"\x8e", b"\x8d", b"\x96"])  # BINBYTES8, BINUNICODE8,
def test_a_pickle_declaring_a_huge_string_is_refused(tmp_path, opcode):  # BYTEARRAY8
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x05" + opcode + HUGE.to_bytes(8, "little") + b"abc.")
    with pytest.raises(DataError, match=rf"{path}"):
        restricted_load(path)


def test_a_pickle_declaring_a_huge_frame_is_refused(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(b"\x80\x04\x95" + HUGE.to_bytes(8, "little") + b"N.")
    with pytest.raises(DataError, match=rf"{path}"):
        restricted_load(path)


def test_an_ordinary_pickled_array_still_loads(tmp_path):
    path = tmp_path / "ok"
    a = np.arange(3072 * 2, dtype=np.uint8).reshape(2, 3072)
    path.write_bytes(pickle.dumps({"data": a}, protocol=4))
    assert np.array_equal(restricted_load(path)["data"], a)


def _gzip_bomb(path, header: bytes, inflated: int) -> None:
    """A gzip file: an IDX ``header`` followed by ``inflated`` zero bytes, compressed
    (about a thousandth of that on disk)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(comp.compress(header))
        chunk = bytes(1 << 20)
        for _ in range(inflated >> 20):
            f.write(comp.compress(chunk))
        f.write(comp.flush())


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    """The header announces 10 images of 28x28 (7840 bytes); the stream inflates to 200 MB."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = encode_idx(np.zeros((10, 28, 28), np.uint8))[:16]
    _gzip_bomb(path, header, 200 << 20)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"{path}.*trailing garbage"):
            read_idx(path, ndim=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_a_gzip_header_declaring_more_than_gzip_can_hold_is_refused(tmp_path):
    """Deflate expands at most about 1032-fold: a 100-byte file cannot hold 10^12 bytes."""
    path = tmp_path / "x.gz"
    header = bytes([0, 0, 8, 3]) + np.array([10**4, 10**4, 10**4], ">u4").tobytes()
    path.write_bytes(gzip.compress(header + bytes(100)))
    with pytest.raises(DataError, match=rf"{path}.*declares"):
        read_idx(path, ndim=3)


def test_an_ordinary_gzip_idx_still_reads(tmp_path):
    path = tmp_path / "x.gz"
    a = np.arange(6 * 28 * 28, dtype=np.uint8).reshape(6, 28, 28)
    path.write_bytes(gzip.compress(encode_idx(a)))
    assert np.array_equal(read_idx(path, ndim=3), a)


def test_a_cache_entry_declaring_a_huge_array_is_ignored(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels = np.arange(10, dtype=np.uint8)
    src.write_bytes(gzip.compress(encode_idx(labels)))
    entry = cache.entry_path(src)
    entry.parent.mkdir(parents=True)
    header = {"descr": "|u1", "fortran_order": False, "shape": (HUGE,)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    entry.write_bytes(buf.getvalue() + b"\0" * 16)
    with caplog.at_level("WARNING", logger="advlab"):
        got = cache.read_idx_cached(src, ndim=1)
    assert np.array_equal(got, labels)
    assert str(entry) in caplog.text


def _tar_gz_of_zeros(path, size: int) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))


def test_an_archive_declaring_more_than_allowed_is_refused_before_writing(tmp_path):
    archive = tmp_path / "a.tar.gz"
    _tar_gz_of_zeros(archive, 8 << 20)
    dest = tmp_path / "out"
    with pytest.raises(DataError, match=rf"{archive}.*{8 << 20} bytes.*at most {1 << 20}"):
        safe_extract(archive, dest, max_bytes=1 << 20)
    assert not dest.exists() or list(dest.rglob("*")) == []
    assert [p.name for p in safe_extract(archive, dest)] == ["data_batch_1"]  # default bound


def test_an_archive_with_a_member_larger_than_the_file_can_hold_is_refused(tmp_path):
    """An uncompressed tar holds each member's bytes: a declared size beyond the file is a
    lie, refused before extraction."""
    archive = tmp_path / "a.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x")
        info.size = 10
        tar.addfile(info, io.BytesIO(bytes(10)))
    raw = bytearray(buf.getvalue())
    # rewrite the size field (octal, bytes 124-135) to 2^33 - 1 and fix the checksum
    raw[124:136] = b"77777777777\0"
    raw[148:156] = b"        "
    raw[148:156] = f"{sum(raw[:512]):06o}\0 ".encode()
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{archive}"):
        safe_extract(archive, tmp_path / "out")


def test_a_weights_spec_asking_for_absurd_sizes_is_refused_before_building(tmp_path):
    """The spec of a tiny weights file asks for an MLP of 10^14 parameters: the shapes are
    compared first (on the meta device), so nothing of that size is allocated."""
    from advlab import models
    from advlab.weights import load_model, save_model

    path = save_model(tmp_path / "run", models.create("mlp", dataset="digits", widths=[8]))
    from advlab.io import load_state, save_state

    state = load_state(path)
    state["meta"]["spec"]["kwargs"]["widths"] = [10**7, 10**7]
    save_state(path, state)
    path.with_suffix(".json").write_text(json.dumps(state["meta"]))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{path}.*do not fit"):
            load_model(path)
    finally:
        tracemalloc.stop()


def test_generative_weights_are_checked_before_building_too(tmp_path):
    from advlab.generative.base import create
    from advlab.generative.weights import load_generative, save_generative
    from advlab.io import load_state, save_state

    path = save_generative(tmp_path / "run", create("vae", dataset="digits", hidden=[8]))
    state = load_state(path)
    state["meta"]["spec"]["kwargs"]["hidden"] = [10**7, 10**7]
    save_state(path, state)
    path.with_suffix(".json").write_text(json.dumps(state["meta"]))
    with pytest.raises(ValueError, match=rf"{path}.*do not fit"):
        load_generative(path)


def test_a_model_still_loads_after_the_check(tmp_path):
    from advlab import models
    from advlab.weights import load_model, save_model

    model = models.create("mlp", dataset="digits", widths=[8])
    path = save_model(tmp_path / "run", model)
    back = load_model(path)
    for (k, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
