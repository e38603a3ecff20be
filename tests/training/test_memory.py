"""The fine-tuning memory calculator behind docs/fine-tuning.md's table."""
from engine.model import ModelConfig
from training.memory import SHAPES, estimate, measure, parameters


def test_the_qwen_shapes_have_the_published_parameter_counts():
    # The model cards: 0.49 B (0.36 B without the embedding) and 1.54 B (1.31 B).
    assert parameters(ModelConfig(**SHAPES["qwen2.5-coder-0.5b"])) == (494_032_768, 136_134_656)
    assert parameters(ModelConfig(**SHAPES["qwen2.5-coder-1.5b"])) == (1_543_714_304, 233_373_696)


def test_measure_counts_what_autograd_keeps():
    config = ModelConfig(**{**SHAPES["qwen2.5-coder-0.5b"], "n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2,
                            "intermediate_size": 128, "vocab_size": 1000})
    measured = measure(config, short=32, long=64)
    # the loss keeps at least its fp32 log-probabilities: 4 bytes a vocabulary entry a token
    assert 0 < measured["block_per_token"] and measured["head_loss_per_token"] >= 4 * 1000


def test_estimate_gives_the_documented_table():
    config = ModelConfig(**SHAPES["qwen2.5-coder-0.5b"])
    measured = {"block_per_token": 61.6 * 1024, "head_loss_per_token": 602.8 * 1024}  # measure() on this shape
    one = estimate(config, measured, "ddp", 1, 2, 2048, False)["gib_per_device"]
    four = estimate(config, measured, "fsdp", 4, 2, 2048, True)["gib_per_device"]
    assert (one["weights_grads_adamw"], one["total"]) == (7.4, 23.2)
    assert (four["weights_grads_adamw"], four["total"]) == (1.8, 11.9)
