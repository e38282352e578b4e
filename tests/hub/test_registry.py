"""The checkpoint registry: where checkpoints are found, what is loaded, and what is refused
(always with the file and the problem named, and without touching the model)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from acuzoo.hub import CheckpointError, load_zoo_pretrained, save_checkpoint, sha256_file
from acuzoo.hub.manifest import write_entry

ARCH = "cifar_resnet29_conv3"
NAME = f"{ARCH}.cifar10"  # the registry fixture's one entry


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _republish(folder: Path, state: dict, metadata: dict | None = None) -> None:
    """Replace the registry's file and record its new sha256, so only the content is wrong."""
    path = folder / "weights.safetensors"
    save_file(state, str(path), metadata=metadata or {"architecture": ARCH})
    write_entry({"name": NAME, "file": path.name, "sha256": sha256_file(path)}, folder)


def test_importing_acuzoo_reads_no_checkpoint_file(tmp_path):
    (tmp_path / "manifest.json").write_text("not json")
    code = (
        "import builtins, io, os\n"
        "seen = []\n"
        "real = io.open\n"
        "def spy(f, *a, **k):\n"
        "    seen.append(str(f)); return real(f, *a, **k)\n"
        "builtins.open = io.open = spy\n"
        "import acuzoo\n"
        "print([p for p in seen if 'manifest' in p or p.endswith('.safetensors')])\n"
    )
    env = {"ACUZOO_CHECKPOINTS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_checkpoint_loads_exactly(registry, make_model):
    folder, published = registry
    model = load_zoo_pretrained(make_model(pretrained_cfg="cifar10"), checkpoint_dir=folder)
    assert _same_state(model, published)


def test_env_var_points_at_another_folder(registry, monkeypatch, make_model):
    folder, published = registry
    monkeypatch.setenv("ACUZOO_CHECKPOINTS", str(folder))
    assert _same_state(load_zoo_pretrained(make_model()), published)


def test_a_file_passed_directly_loads_and_is_checked_against_the_manifest_beside_it(registry, make_model):
    folder, published = registry
    assert _same_state(load_zoo_pretrained(make_model(), file=folder / "weights.safetensors"), published)
    with open(folder / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x7f\x7f\x7f\x7f")
    with pytest.raises(CheckpointError, match="sha256"):
        load_zoo_pretrained(make_model(), file=folder / "weights.safetensors")


def test_a_changed_file_is_refused_by_its_sha256_and_the_model_is_untouched(registry, make_model):
    folder, _ = registry
    with open(folder / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: sha256 .* does not match the manifest"):
        load_zoo_pretrained(model, checkpoint_dir=folder)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_truncated_file_is_refused_by_its_sha256(registry, make_model):
    folder, _ = registry
    path = folder / "weights.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_zoo_pretrained(make_model(), checkpoint_dir=folder)


def test_a_truncated_file_is_refused_as_unreadable_even_when_the_manifest_agrees(registry, make_model):
    folder, _ = registry
    path = folder / "weights.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    write_entry({"name": NAME, "file": path.name, "sha256": sha256_file(path)}, folder)
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: not a readable safetensors file"):
        load_zoo_pretrained(make_model(), checkpoint_dir=folder)


def test_a_checkpoint_of_another_architecture_is_refused(registry, make_model):
    folder, _ = registry
    other = make_model()
    save_checkpoint(other, folder / "weights.safetensors", "cifar_resnet29_acu")
    write_entry(
        {"name": NAME, "file": "weights.safetensors", "sha256": sha256_file(folder / "weights.safetensors")}, folder
    )
    with pytest.raises(CheckpointError, match="holds weights of 'cifar_resnet29_acu', not of 'cifar_resnet29_conv3'"):
        load_zoo_pretrained(make_model(), checkpoint_dir=folder)


def test_another_networks_tensors_are_refused_even_without_metadata(registry, make_model):
    folder, _ = registry
    acu = make_model(conv_type="acu", position_groups=1)  # same layout, ACU tensors
    _republish(folder, {k: v.contiguous() for k, v in acu.state_dict().items()}, {})
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"does not fit .* unexpected keys \['stages.0.0.conv2.positions'"):
        load_zoo_pretrained(model, checkpoint_dir=folder)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_keys_are_refused_and_nothing_is_loaded(registry, make_model):
    folder, _ = registry
    state = load_file(str(folder / "weights.safetensors"))
    del state["stages.1.0.conv1.weight"]
    _republish(folder, state)
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"1 missing keys \['stages.1.0.conv1.weight'\].*nothing was loaded"):
        load_zoo_pretrained(model, checkpoint_dir=folder)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unexpected_keys_are_refused(registry, make_model):
    folder, _ = registry
    state = load_file(str(folder / "weights.safetensors"))
    state["stages.9.extra.weight"] = torch.zeros(3)
    _republish(folder, state)
    with pytest.raises(CheckpointError, match=r"1 unexpected keys \['stages.9.extra.weight'\]"):
        load_zoo_pretrained(make_model(), checkpoint_dir=folder)


def test_a_tensor_of_the_wrong_shape_is_refused(registry, make_model):
    folder, _ = registry
    state = load_file(str(folder / "weights.safetensors"))
    state["stages.0.0.conv1.weight"] = state["stages.0.0.conv1.weight"][:16].contiguous()
    _republish(folder, state)
    with pytest.raises(CheckpointError, match=r"wrong shape .*stages.0.0.conv1.weight: \(16, 64, 1, 1\)"):
        load_zoo_pretrained(make_model(), checkpoint_dir=folder)


def test_another_class_count_resets_the_classifier_and_says_so(registry, caplog, make_model):
    folder, published = registry
    with caplog.at_level(logging.WARNING, logger="acuzoo"):
        model = load_zoo_pretrained(make_model(num_classes=3), checkpoint_dir=folder)
    assert "classifier has 10 classes, the model 3: the classifier (head.fc) is reset" in caplog.text
    assert model.get_classifier().out_features == 3
    trunk = {k: v for k, v in published.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())


def test_the_same_class_count_keeps_the_classifier_silently(registry, caplog, make_model):
    folder, published = registry
    with caplog.at_level(logging.WARNING, logger="acuzoo"):
        model = load_zoo_pretrained(make_model(), checkpoint_dir=folder)
    assert "reset" not in caplog.text
    assert torch.equal(model.get_classifier().weight, published.get_classifier().weight)


def test_a_tag_without_a_checkpoint_names_what_the_registry_has(registry):
    folder, _ = registry
    model = timm.create_model("cifar_resnet29_acu")
    with pytest.raises(CheckpointError, match=r"no checkpoint 'cifar_resnet29_acu.cifar10' .*never downloads"):
        load_zoo_pretrained(model, checkpoint_dir=folder)


def test_a_folder_without_manifest_names_the_environment_variable(tmp_path, make_model):
    with pytest.raises(CheckpointError, match="no checkpoint manifest at .*ACUZOO_CHECKPOINTS"):
        load_zoo_pretrained(make_model(), checkpoint_dir=tmp_path)


def test_the_manifest_is_plain_json_sorted_by_name(registry):
    folder, _ = registry
    write_entry({"name": "a_model.x", "file": "a.safetensors", "sha256": "0" * 64}, folder)
    names = [e["name"] for e in json.loads((folder / "manifest.json").read_text())["checkpoints"]]
    assert names == sorted(names) == ["a_model.x", NAME]


# --- writing the registry: checked first, replaced whole -------------------------------------------------------


def _half_written_then_disk_full(path: Path, text: str, *args, **kwargs) -> None:
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    raise OSError(28, "No space left on device", str(path))


def test_writing_an_entry_into_a_malformed_manifest_names_the_file_and_changes_nothing(tmp_path):
    (tmp_path / "manifest.json").write_text('{"checkpoints": [')
    with pytest.raises(CheckpointError, match=r"manifest\.json: unreadable manifest"):
        write_entry({"name": NAME, "file": "weights.safetensors", "sha256": "0" * 64}, tmp_path)
    assert (tmp_path / "manifest.json").read_text() == '{"checkpoints": ['


def test_an_entry_cannot_take_the_file_of_another_entry(registry):
    folder, _ = registry
    before = (folder / "manifest.json").read_text()
    with pytest.raises(CheckpointError, match=r"weights\.safetensors is the file of cifar_resnet29_conv3\.cifar10"):
        write_entry({"name": "other_model.x", "file": "weights.safetensors", "sha256": "0" * 64}, folder)
    assert (folder / "manifest.json").read_text() == before


def test_a_manifest_write_that_fails_midway_leaves_the_old_manifest_whole(registry, monkeypatch):
    folder, _ = registry
    before = (folder / "manifest.json").read_text()
    monkeypatch.setattr(Path, "write_text", _half_written_then_disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_entry({"name": "a_model.x", "file": "a.safetensors", "sha256": "0" * 64}, folder)
    assert (folder / "manifest.json").read_text() == before
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "weights.safetensors"]


def test_a_checkpoint_write_that_fails_midway_leaves_the_old_file_whole(registry, monkeypatch, make_model):
    folder, _ = registry
    path = folder / "weights.safetensors"
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise OSError(28, "No space left on device", filename)

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(make_model(), path, ARCH)
    assert path.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "weights.safetensors"]
