"""Which folders the registry reads: the published checkpoints that ship with acuzoo always, the
folders of ``$ACUZOO_CHECKPOINTS`` before them (adding and overriding names), an explicit
``checkpoint_dir=`` alone."""

from __future__ import annotations

import os

import pytest

from acuzoo.bundled import checkpoints_dir
from acuzoo.hub import CheckpointError, find_entry
from acuzoo.hub.manifest import registry_folders, write_entry

PUBLISHED = "mobilenetv2_acu_100.fmnist"


def _folder_with(tmp_path, name: str, sub: str):
    folder = tmp_path / sub
    folder.mkdir()
    write_entry({"name": name, "file": f"{sub}.safetensors", "sha256": "0" * 64}, folder)
    return folder


def test_without_the_variable_the_published_checkpoints_are_found(monkeypatch):
    monkeypatch.delenv("ACUZOO_CHECKPOINTS", raising=False)
    entry, path = find_entry(PUBLISHED)
    assert path == checkpoints_dir() / entry.file and path.is_file()


def test_the_variable_adds_folders_before_the_published_one(tmp_path, monkeypatch):
    mine = _folder_with(tmp_path, "cifar_resnet29_acu.mine", "a")
    monkeypatch.setenv("ACUZOO_CHECKPOINTS", str(mine))
    assert registry_folders() == [mine, checkpoints_dir()]
    assert find_entry("cifar_resnet29_acu.mine")[1] == mine / "a.safetensors"
    assert find_entry(PUBLISHED)[1].parent == checkpoints_dir()


def test_a_name_in_an_added_folder_overrides_the_published_one(tmp_path, monkeypatch):
    first = _folder_with(tmp_path, PUBLISHED, "first")
    second = _folder_with(tmp_path, PUBLISHED, "second")
    monkeypatch.setenv("ACUZOO_CHECKPOINTS", os.pathsep.join([str(first), str(second)]))
    assert find_entry(PUBLISHED)[1] == first / "first.safetensors"


def test_an_explicit_folder_is_read_alone(tmp_path, monkeypatch):
    mine = _folder_with(tmp_path, "cifar_resnet29_acu.mine", "a")
    monkeypatch.delenv("ACUZOO_CHECKPOINTS", raising=False)
    assert find_entry("cifar_resnet29_acu.mine", mine)[1] == mine / "a.safetensors"
    with pytest.raises(CheckpointError, match=f"no checkpoint '{PUBLISHED}'"):
        find_entry(PUBLISHED, mine)
