"""Our own models are Hugging Face models too: what `code-assistant train` exports, transformers
loads with the same logits and the same token ids, for the GPT-2 and the Llama architecture; and
llama.cpp's converter finds every tensor and the tokenizer where it looks for them (the gguf
package's own tables, which convert_hf_to_gguf.py uses)."""
import json

import pytest
import torch

from engine.model_dir import load_model_dir

from ..conftest import STDLIB
from .test_cli import REPO, TINY, data_dir, run  # noqa: F401 (data_dir is a fixture)

CONFIGS = {"gpt2": TINY, "llama": REPO / "training" / "configs" / "tiny-llama.yaml"}
HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, data_dir, tmp_path_factory):  # noqa: F811
    arch = request.param
    out = tmp_path_factory.mktemp(f"export-{arch}")
    run("train", "--config", CONFIGS[arch], "--data", data_dir, "--out", out, "--max-steps", 20,
        "--trainer.val_check_interval", 10)
    return arch, out


@pytest.mark.slow
def test_transformers_loads_the_export_with_the_same_logits_and_token_ids(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch, out = exported
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [HF_CLASSES[arch]]
    ours, tokenizer, _ = load_model_dir(out)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(theirs).__name__ == HF_CLASSES[arch]

    text = (STDLIB / "json" / "decoder.py").read_text()
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == text
    for name in ("<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"):
        assert hf_tokenizer.convert_tokens_to_ids(name) == tokenizer.token_id(name)
    assert hf_tokenizer.eos_token_id == tokenizer.eot_id == config["eos_token_id"]

    block = ours.config.block_size
    batch = torch.tensor([ids[:block], ids[block:2 * block]])
    with torch.no_grad():
        diff = (ours(batch) - theirs(batch).logits).abs().max().item()
    print(f"{arch}: max |logit difference| ours vs transformers {diff:.2e}")
    assert diff <= 1e-4


@pytest.mark.slow
def test_llama_cpp_converter_maps_every_tensor_and_reads_the_tokenizer(exported):
    gguf = pytest.importorskip("gguf", reason="the gguf package (dev extra) is not installed")
    from safetensors import safe_open

    arch, out = exported
    config = json.loads((out / "config.json").read_text())
    n_layer = config.get("n_layer") or config["num_hidden_layers"]
    tensor_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layer)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    unmapped = [n for n in names if tensor_map.get_name(n, try_suffixes=(".weight", ".bias")) is None]
    assert names and not unmapped
    special = gguf.SpecialVocab(out, load_merges=True)
    assert special.merges and special.special_token_ids["eos"] == config["eos_token_id"]
