"""Fine-tuning a pretrained model on a team's code, as a team runs it: `code-assistant data
--tokenizer DIR`, `code-assistant train --init DIR` (one process and 2-process gloo DDP), `eval`
before and after, and the export served by `code-assistant serve`. The pretrained model is a tiny
random Qwen2-family directory (transformers' own classes, a tokenizer with Qwen2.5-Coder's
special tokens); transformers is the oracle for the export."""
import json
import shutil

import httpx
import numpy as np
import pytest
import torch

from benchmarks.hf_models import FAMILIES, save_random_model, train_tokenizer
from engine.model_dir import load_model_dir
from engine.prompt import PromptBuilder
from engine.tokenizer import HFTokenizer
from training.data import Documents, load_split, read_meta
from training.fim import apply_fim

from ..conftest import STDLIB
from .test_cli import REPO, TINY, data_dir, last_json, one_line_error, run  # noqa: F401 (data_dir is a fixture)

FINETUNE = REPO / "training" / "configs" / "finetune.yaml"
# finetune.yaml's recipe at the tiny model's scale: short windows, one micro-batch per step, and a
# learning rate for random weights (a real pretrained model keeps finetune.yaml's 2e-5).
SMALL = ["--config", FINETUNE, "--data.seq_len", 128, "--data.batch_size", 8, "--trainer.accumulate_grad_batches", 1,
         "--optim.learning_rate", "1.0e-3", "--optim.warmup_steps", 5, "--data.val_batches", 4,
         "--trainer.val_check_interval", 10, "--trainer.log_every_n_steps", 5]
TEAM_CODE = [STDLIB / "logging", STDLIB / "json"]   # the team's repository


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp("qwen") / "Qwen2.5-Coder-tiny", FAMILIES["qwen2"])


@pytest.fixture(scope="module")
def team_data(qwen_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("team-data")
    run("data", *[a for src in TEAM_CODE for a in ("--src", src)], "--out", out, "--tokenizer", qwen_dir,
        "--val-fraction", 0.2)
    return out


def train_losses(out) -> list[float]:
    rows = (out / "run" / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("train_loss")
    return [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]


def test_data_is_tokenized_with_the_models_tokenizer(qwen_dir, team_data):
    from transformers import AutoTokenizer

    meta = read_meta(team_data)
    assert meta["format"] == "code-assistant-data/2" and meta["tokenizer"]["kind"] == "hugging-face"
    assert (team_data / "tokenizer.json").read_bytes() == (qwen_dir / "tokenizer.json").read_bytes()
    eos = json.loads((qwen_dir / "config.json").read_text())["eos_token_id"]
    assert meta["documents"] == {"bos_ids": [], "eos_id": eos}
    first = meta["splits"]["train"]["paths"][0]           # "logging/__init__.py": relative to its source's parent
    text = (STDLIB / first).read_text()
    expected = AutoTokenizer.from_pretrained(qwen_dir)(text, add_special_tokens=False)["input_ids"] + [eos]
    assert load_split(team_data, "train")[:len(expected)].tolist() == expected


def test_documents_open_with_the_bos_of_a_tokenizer_that_has_one(tmp_path):
    """CodeLlama-style: each file is <s> text </s> in the token stream, as in the model's pretraining."""
    from training.data import CollectOptions, build_dataset

    base = save_random_model(tmp_path / "codellama", FAMILIES["codellama"])
    meta = build_dataset([STDLIB / "json"], tmp_path / "data", 0, CollectOptions(val_fraction=0.0), str(base))
    bos, eos = meta["documents"]["bos_ids"], meta["documents"]["eos_id"]
    assert len(bos) == 1 and eos == json.loads((base / "config.json").read_text())["eos_token_id"] != bos[0]
    tokens = load_split(tmp_path / "data", "train").tolist()
    files = meta["splits"]["train"]["files"]
    assert tokens[0] == bos[0] and tokens[-1] == eos and tokens.count(bos[0]) == tokens.count(eos) == files
    starts = [i + 1 for i, t in enumerate(tokens[:-1]) if t == eos]
    assert all(tokens[i] == bos[0] for i in starts)


@pytest.mark.parametrize("family", ["qwen2", "codellama", "deepseek", "starcoder2"])
def test_fim_windows_use_the_familys_tokens_in_the_layout_the_engine_serves(family):
    """A FIM training example's prompt part is exactly what the engine builds for that prefix and
    suffix at serving time, with the family's own tokens; the middle follows, then the end token."""
    spec = FAMILIES[family]
    tokenizer = HFTokenizer(json.loads(train_tokenizer(spec, 800).to_str()), (spec.eos,))
    eos = tokenizer.token_id(spec.eos)
    documents = Documents(tuple(tokenizer.bos_ids), eos)
    text = (STDLIB / "json" / "scanner.py").read_text()[:1500]
    doc = np.array([*documents.bos_ids, *tokenizer.encode(text), eos], dtype=np.int64)
    fim = tokenizer.fim
    for seed in range(5):
        out = apply_fim(doc, tokenizer, np.random.default_rng(seed), fim_rate=1.0, spm_rate=0.0, documents=documents)
        assert out[:len(tokenizer.bos_ids) + 1] == [*tokenizer.bos_ids, fim.prefix]
        end = [tokenizer.eot_id] if tokenizer.eot_id == eos else [tokenizer.eot_id, eos]
        assert out[-len(end):] == end
        p, s, m = out.index(fim.prefix), out.index(fim.suffix), out.index(fim.middle)
        marker = tokenizer.decode(tokenizer.encode("a"))[:-1]   # SentencePiece's word-start space, or ""
        prefix = tokenizer.decode(out[p + 1:s]).removeprefix(marker)
        suffix, middle = tokenizer.decode(out[s + 1:m]), tokenizer.decode(out[m + 1:-len(end)])
        assert prefix + middle + suffix == text
        served = PromptBuilder(tokenizer, block_size=4096).build(prefix, suffix, max_tokens=16)
        assert out[:m + 1] == served


@pytest.mark.slow
def test_fine_tune_lowers_the_loss_and_the_export_serves(qwen_dir, team_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from tests.http_api.conftest import ServerProcess

    before = last_json(run("eval", "--model", qwen_dir, "--data", team_data).stdout)
    out = tmp_path / "team-model"
    summary = last_json(run("train", "--init", qwen_dir, "--data", team_data, "--out", out, "--max-steps", 30,
                            *SMALL).stdout)
    after = last_json(run("eval", "--model", out, "--data", team_data).stdout)
    losses = train_losses(out)
    print(f"fine-tune: val loss {before['val_loss']} -> {after['val_loss']}, train loss {losses[0]:.3f} -> "
          f"{losses[-1]:.3f}, {summary['wall_seconds']} s, {summary['tokens_per_second']} tokens/s")
    assert summary["steps"] == 30 and after["val_loss"] < before["val_loss"] - 0.2 and losses[-1] < losses[0]

    config = json.loads((out / "config.json").read_text())
    base = json.loads((qwen_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is True
    assert {k: v for k, v in config.items() if k not in ("code_assistant", "dtype")} == \
        {k: v for k, v in base.items() if k != "dtype"}
    assert config["code_assistant"]["training"]["init"] == str(qwen_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (qwen_dir / name).read_bytes()

    ours, tokenizer, _ = load_model_dir(out)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode((STDLIB / "logging" / "config.py").read_text())[:128]])
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max().item() <= 1e-4
        assert (ours(ids) - load_model_dir(qwen_dir)[0](ids)).abs().max().item() > 1e-3  # the weights did change

    server = ServerProcess(out, tmp_path / "serve.log")
    try:
        reply = httpx.post(server.url + "/v1/completions", timeout=60, json={
            "model": "team-model", "prompt": "import logging\n\nlogger = logging.", "suffix": "\n",
            "max_tokens": 8, "temperature": 0})
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert isinstance(body["choices"][0]["text"], str) and body["usage"]["completion_tokens"] >= 1
    print("served completion:", repr(body["choices"][0]["text"]))


@pytest.mark.slow
def test_two_process_cpu_ddp_fine_tune(qwen_dir, team_data, tmp_path):
    out = tmp_path / "ddp"
    proc = run("train", "--init", qwen_dir, "--data", team_data, "--out", out, "--devices", 2, "--max-steps", 20,
               *SMALL, "--data.batch_size", 4)
    summary = last_json(proc.stdout)
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr
    losses = train_losses(out)
    assert losses[-1] < losses[0]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert load_model_dir(out)[0].config.arch == "qwen2"


@pytest.mark.slow
def test_bad_init_and_mismatched_data_give_one_line(qwen_dir, team_data, data_dir, tmp_path):  # noqa: F811
    train = ["train", "--config", FINETUNE, "--data", team_data, "--out", tmp_path / "m", "--max-steps", 1]
    one_line_error(run(*train, "--init", tmp_path / "missing", check=False), "does not exist")
    unknown = tmp_path / "unknown"
    shutil.copytree(qwen_dir, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["MambaForCausalLM"]}))
    one_line_error(run(*train, "--init", unknown, check=False), "unsupported architecture 'MambaForCausalLM'")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(qwen_dir, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    one_line_error(run(*train, "--init", no_tokenizer, check=False), "tokenizer.json")
    one_line_error(run("train", "--config", FINETUNE, "--data", data_dir, "--out", tmp_path / "m", "--init", qwen_dir,
                       check=False), "another tokenizer", "--tokenizer")
    one_line_error(run("train", "--config", TINY, "--data", team_data, "--out", tmp_path / "m", "--init", qwen_dir,
                       check=False), "with --init the model comes from its directory")
    one_line_error(run(*train, "--init", qwen_dir, "--trainer.strategy", "fsdp", check=False), "CUDA")
    one_line_error(run("data", "--src", STDLIB / "json", "--out", tmp_path / "d", "--tokenizer", tmp_path / "nowhere",
                       check=False), "not code-bpe, gpt2 or a model directory")
    one_line_error(run("data", "--src", STDLIB / "json", "--out", tmp_path / "d", "--tokenizer", no_tokenizer,
                       check=False), "tokenizer.json")


@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA GPU (bf16-mixed and FSDP run on GPUs only)")
@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
def test_cuda_bf16_fine_tune(qwen_dir, team_data, tmp_path, strategy):
    out = tmp_path / strategy
    summary = last_json(run("train", "--init", qwen_dir, "--data", team_data, "--out", out, "--max-steps", 20,
                            *SMALL, "--trainer.strategy", strategy, "--trainer.activation_checkpointing", "true").stdout)
    assert summary["steps"] == 20 and summary["precision"] == "bf16-mixed"
    assert train_losses(out)[-1] < train_losses(out)[0]
    assert load_model_dir(out)[0].config.arch == "qwen2"
