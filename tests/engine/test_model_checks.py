"""The checks on model files, on their own (tests/test_hostile_model_dirs.py runs them through the CLI)."""
from __future__ import annotations

import json
import shutil

import pytest

from engine.model import ModelConfig
from engine.model_checks import ModelDirError, inside, json_depth, parse_json, shard_path, validate_config
from engine.model_dir import load_model_dir


def test_json_depth_counts_arrays_and_objects_only():
    assert json_depth(json.loads('{"a": [1, {"b": "[[[["}], "c": 2}')) == 3
    assert json_depth("text") == 0


@pytest.mark.parametrize("text", ["NaN", '{"x": Infinity}', '{"x": -Infinity}'])
def test_non_finite_json_numbers_are_refused(tmp_path, text):
    with pytest.raises(ModelDirError, match="not a number JSON allows"):
        parse_json(tmp_path / "config.json", text.encode())


def test_deep_nesting_is_refused_without_recursing(tmp_path):
    with pytest.raises(ModelDirError, match="nests too deeply"):
        parse_json(tmp_path / "x.json", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ModelDirError, match="nests too deeply"):
        parse_json(tmp_path / "x.json", b"[" * 200 + b"]" * 200)


@pytest.mark.parametrize("name", ["../other/model.safetensors", "/etc/passwd", "a/../../b", "", 7, "x\x00"])
def test_shard_names_outside_the_directory_are_refused(tmp_path, name):
    with pytest.raises(ModelDirError):
        shard_path(tmp_path, tmp_path / "model.safetensors.index.json", name)


def test_a_symlink_inside_the_directory_is_followed(tmp_path):
    (tmp_path / "real.safetensors").write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "real.safetensors")
    assert shard_path(tmp_path, tmp_path / "index.json", "link.safetensors") == tmp_path / "link.safetensors"


def test_a_hub_cache_snapshot_may_link_into_its_own_blobs_only(tmp_path):
    """huggingface_hub's cache: snapshots/REV/file -> ../../blobs/SHA."""
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "sha").write_bytes(b"x")
    (snapshot / "model.safetensors").symlink_to("../../blobs/sha")
    assert inside(snapshot, snapshot / "model.safetensors") == repo / "blobs" / "sha"
    (tmp_path / "elsewhere").write_bytes(b"x")
    (snapshot / "other.safetensors").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelDirError, match="outside the model directory"):
        inside(snapshot, snapshot / "other.safetensors")


def test_a_hub_cache_snapshot_loads(tiny_model_dir, tmp_path):
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in tiny_model_dir.iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(f"../../blobs/{file.name}")
    model, tokenizer, _ = load_model_dir(snapshot)
    assert model.config.n_layer == 2 and tokenizer.n_vocab > 0


@pytest.mark.parametrize("fields, message", [
    ({"n_layer": 1_000_000}, "n_layer"),
    ({"n_embd": True}, "n_embd"),
    ({"intermediate_size": -4}, "intermediate_size"),
    ({"head_dim": -8}, "head_dim"),
    ({"norm_eps": float("inf")}, "epsilon"),
    ({"norm_eps": "x"}, "epsilon"),
    ({"qkv_bias": "yes"}, "qkv_bias"),
    ({"position": "rope", "rope_scaling": {"rope_type": "linear"}}, "lacks factor"),
    ({"position": "rope", "rope_scaling": {"rope_type": "yarn", "factor": float("nan")}}, "factor"),
    ({"position": "rope", "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                                           "high_freq_factor": 1}}, "differ"),
])
def test_validate_config_names_the_value_at_fault(fields, message):
    config = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
    for name, value in fields.items():
        setattr(config, name, value)
    with pytest.raises(ModelDirError, match=message) as caught:
        validate_config(config, "some/config.json")
    assert str(caught.value).startswith("some/config.json: ")


def test_validate_config_accepts_a_sound_config():
    validate_config(ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16), "config.json")
