"""Which native library a process loads: the wheel's prebuilt one only where it matches, else a
just-in-time build that announces itself, in a cache that other environments never share."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from acuzoo.ops import native, native_prebuilt
from acuzoo.ops.native_prebuilt import INFO_NAME, LIBRARY_NAME, find_prebuilt, sources_digest


def _write_record(folder: Path, **changes) -> None:
    record = {
        "torch": torch.__version__,
        "python": native_prebuilt.python_tag(),
        "sources": sources_digest(native.source_files("cpu")),
        "features": [],
        **changes,
    }
    (folder / LIBRARY_NAME).write_bytes(b"not really a library")
    (folder / INFO_NAME).write_text(json.dumps(record))


def _reason(folder: Path) -> str | None:
    return find_prebuilt(folder).mismatch(sources_digest(native.source_files("cpu")))


def test_a_folder_without_a_prebuilt_library_has_none(tmp_path):
    assert find_prebuilt(tmp_path) is None


def test_a_prebuilt_library_for_this_torch_python_sources_and_cpu_matches(tmp_path):
    _write_record(tmp_path)
    assert _reason(tmp_path) is None


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("torch", "1.0.0", "torch 1.0.0"),
        ("python", "2.7", "Python 2.7"),
        ("sources", "0" * 64, "other kernel sources"),
        ("features", ["avx9000"], "avx9000"),
    ],
)
def test_a_prebuilt_library_for_another_build_is_refused_with_the_reason(tmp_path, monkeypatch, field, value, said):
    monkeypatch.setattr(native_prebuilt.platform, "machine", lambda: "x86_64")
    _write_record(tmp_path, **{field: value})
    assert said in _reason(tmp_path)


def test_required_cpu_features_follow_the_vector_flags():
    assert native_prebuilt.required_features(["-O3", "-mavx2", "-mfma", "-fopenmp"]) == ["avx2", "fma"]


def test_the_cache_name_differs_per_torch_and_python(monkeypatch):
    name = native.build_name("cpu")
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert native.build_name("cpu") != name
    monkeypatch.undo()
    monkeypatch.setattr(sys, "version", "3.99.0 (other)")
    assert native.build_name("cpu") != name


def test_two_installations_never_share_a_cache_entry(monkeypatch, tmp_path):
    name = native.build_name("cpu")
    copy = tmp_path / "csrc"
    for source in native.source_files("cpu"):
        target = copy / source.relative_to(native.CSRC)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    monkeypatch.setattr(native, "CSRC", copy)
    assert native.build_name("cpu") != name


def test_a_first_build_announces_itself_and_its_end(tmp_path, monkeypatch, caplog):
    from torch.utils import cpp_extension

    def fake_load(name, build_directory, verbose, **kwargs):
        assert verbose, "a first build shows torch's progress"
        Path(build_directory, f"{name}.so").write_bytes(b"")

    monkeypatch.setenv("ACUZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        library = native.build_library("cpu")
    assert library.parent.parent == tmp_path
    said = caplog.text
    assert "compiling acuzoo's native kernels (cpu) for torch" in said and "once" in said
    assert "compiled in" in said


def test_a_cached_build_says_nothing(tmp_path, monkeypatch, caplog):
    from torch.utils import cpp_extension

    monkeypatch.setenv("ACUZOO_CACHE_DIR", str(tmp_path))
    name = native.build_name("cpu")
    (tmp_path / name).mkdir()
    (tmp_path / name / f"{name}.so").write_bytes(b"")
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: None)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        native.build_library("cpu")
    assert "compiling" not in caplog.text


def test_info_names_the_loaded_library_and_its_ops(ext):
    info = native.library_info()
    assert info["variant"] == ext and Path(info["library"]).is_file()
    assert "CPU" in info["ops"]["acuzoo::active_conv2d"]
