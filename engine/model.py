"""The transformer: one file for every code-model family the engine runs, chosen by config fields.

One `Transformer` and one `ModelConfig` (gpt-fast's shape): the families differ in fields, not
subclasses. GPT-2 and GPTBigCode are pre-LayerNorm blocks with learned positions and a GELU MLP;
Llama and Qwen2 use RMSNorm, rotary positions and a SwiGLU MLP; StarCoder2 mixes LayerNorm, rotary
positions, a GELU MLP and sliding-window attention. Grouped-query attention covers multi-head
(n_kv_head == n_head) and multi-query (n_kv_head == 1). Weight names of other checkpoints are
mapped to these modules once, at load (engine/families.py).

The KV cache and the positions are arguments of `forward`, so training, prefill and batched
decoding run the same code.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
ACTIVATIONS = {"gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu, "silu": F.silu,
               "relu": F.relu}
POSITIONS = ("learned", "rope")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")

# The shapes `code-assistant train` can build (model.arch), each exported as its Hugging Face class.
ARCHITECTURES = {
    "gpt2": dict(norm="layernorm", mlp="gelu", activation="gelu_tanh", position="learned",
                 qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True),
    "llama": dict(norm="rmsnorm", mlp="swiglu", activation="silu", position="rope",
                  qkv_bias=False, out_bias=False, mlp_bias=False, tie_embeddings=False),
}


@dataclass
class ModelConfig:
    arch: str = "gpt2"                # the family (gpt2, gpt_bigcode, llama, qwen2, starcoder2)
    vocab_size: int = 8192
    block_size: int = 256             # the most positions a sequence may use
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    n_kv_head: int = 0                # 0: n_head (multi-head); 1: multi-query
    head_dim: int = 0                 # 0: n_embd // n_head
    intermediate_size: int = 0        # 0: 4 * n_embd
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    activation: str = "gelu_tanh"
    position: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear" | "llama3" | "yarn", "factor": ...}
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    tie_embeddings: bool = True
    sliding_window: int = 0           # 0: full attention; W: a query sees its last W positions
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        self.n_kv_head = self.n_kv_head or self.n_head
        if not self.head_dim:
            if self.n_embd % self.n_head:
                raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
            self.head_dim = self.n_embd // self.n_head
        self.intermediate_size = self.intermediate_size or 4 * self.n_embd
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("activation", tuple(ACTIVATIONS)),
                              ("position", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.position == "rope":
            if self.head_dim % 2:
                raise ValueError(f"rotary positions need an even head_dim, got {self.head_dim}")
            rope_type = (self.rope_scaling or {}).get("rope_type", "default")
            if rope_type not in ROPE_TYPES:
                raise ValueError(f"rope scaling {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window must be >= 0, got {self.sliding_window}")

    @classmethod
    def for_arch(cls, values: dict) -> "ModelConfig":
        """A config from user-given fields on top of the defaults of their `arch` (ARCHITECTURES)."""
        arch = values.get("arch", cls.arch)
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)} to train, got {arch!r}")
        return cls(**{**ARCHITECTURES[arch], **values})

    def to_dict(self) -> dict:
        return asdict(self)


class KVCacheLike(Protocol):
    """What attention needs from a cache (the engine's kv_cache.PagedBatch implements it).

    `attend` stores this step's keys/values (B, n_kv_head, T, head_dim) for `layer` at the
    positions the cache was given for this forward, and returns the attention of q (B, n_head, T,
    head_dim) over every key each row may see: its own earlier positions, within the sliding
    window if the model has one (the cache is told the window), query heads grouped over key heads.
    The cache chooses how to read its layout.
    """

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


def rope_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim / 2,) and the factor cos and sin are scaled by, as in
    transformers' rope utilities for the types the supported families use."""
    dim, base = config.head_dim, config.rope_theta
    # On the CPU explicitly: the model may be built under torch.device("meta") to skip its init.
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    scaling = dict(config.rope_scaling or {})
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "default":
        return inv_freq, 1.0
    factor = float(scaling["factor"])
    if rope_type == "linear":
        return inv_freq / factor, 1.0
    original = scaling.get("original_max_position_embeddings", config.block_size)
    if rope_type == "llama3":
        low_wavelen = original / scaling["low_freq_factor"]
        high_wavelen = original / scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - scaling["low_freq_factor"]) / (
            scaling["high_freq_factor"] - scaling["low_freq_factor"])
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    # yarn (arXiv 2309.00071): interpolate low frequencies, keep high ones, scale attention
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(scaling.get("beta_fast") or 32), correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / ((high + 0.001 if low == high else high) - low))
    extrapolate = 1 - ramp.clamp(0, 1)
    return inv_freq / factor * (1 - extrapolate) + inv_freq * extrapolate, float(attention_factor)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the half-split layout of Hugging Face checkpoints; cos/sin (B, 1, T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qkv = nn.Linear(config.n_embd, (config.n_head + 2 * config.n_kv_head) * config.head_dim,
                             bias=config.qkv_bias)
        self.out = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.out_bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: tuple | None, mask: torch.Tensor | None,
                kv_cache: KVCacheLike | None) -> torch.Tensor:
        B, T, _ = x.shape
        q_size, kv_size = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split((q_size, kv_size, kv_size), dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        gqa = self.n_kv_head != self.n_head
        if kv_cache is None:
            dropout = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               dropout_p=dropout, enable_gqa=gqa)
        else:
            y = kv_cache.attend(self.layer_idx, q, k, v)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.resid_dropout(self.out(y))


class MLP(nn.Module):
    """GELU MLP (up, act, down) or SwiGLU (gate and up fused in one matmul, act(gate) * up, down)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.mlp == "swiglu"
        width = config.intermediate_size
        self.up = nn.Linear(config.n_embd, 2 * width if self.gated else width, bias=config.mlp_bias)
        self.down = nn.Linear(width, config.n_embd, bias=config.mlp_bias)
        self.act = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.dropout(self.down(h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = norm(config)
        self.attn = Attention(config, layer_idx)
        self.mlp_norm = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, positions, rope, mask, kv_cache):
        x = x + self.attn(self.attn_norm(x), positions, rope, mask, kv_cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_embed = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm = norm(config)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        if config.position == "rope":
            inv_freq, scale = rope_frequencies(config)
            angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32, device="cpu"), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            # Not saved: derived from the config, and kept in fp32 whatever the weights' dtype.
            self.register_buffer("rope_cos", angles.cos() * scale, persistent=False)
            self.register_buffer("rope_sin", angles.sin() * scale, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections (1/sqrt(2 * n_layer)).
        for name, p in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_embed.weight.numel() if non_embedding and self.pos_embed is not None else n

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                kv_cache: KVCacheLike | None = None, last_only: bool = False) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab), or (B, 1, vocab) with last_only.

        Without a cache this is the plain causal forward over positions 0..T-1. With a cache,
        `positions` (B, T) says where each new token sits in its sequence; earlier tokens are read
        from the cache.
        """
        B, T = idx.shape
        if positions is None:
            if kv_cache is not None:
                raise ValueError("positions are required when a kv_cache is given")
            positions = torch.arange(T, device=idx.device).unsqueeze(0).expand(B, T)
            # Known without reading the tensor: no device sync and no torch.compile graph break in training.
            last = T - 1
        else:
            last = int(positions.max())
        if T > self.config.block_size or last >= self.config.block_size:
            raise ValueError(f"sequence of {max(T, last + 1)} positions exceeds block_size {self.config.block_size}")
        x = self.embed(idx)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = self.drop(x)
        rope = None
        if self.config.position == "rope":
            rope = (self.rope_cos[positions].unsqueeze(1).to(x.dtype), self.rope_sin[positions].unsqueeze(1).to(x.dtype))
        mask = self._window_mask(positions, x.dtype) if kv_cache is None else None  # a cache masks itself
        for block in self.layers:
            x = block(x, positions, rope, mask, kv_cache)
        x = self.norm(x)
        if last_only:
            x = x[:, -1:, :]
        return self.head(x)

    def _window_mask(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The additive (B, 1, T, T) mask of sliding-window attention without a cache (None
        without a window): a query at position p sees keys at positions p - W < j <= p."""
        window = self.config.sliding_window
        if not window:
            return None
        keys = torch.arange(positions.shape[1], device=positions.device)
        query = positions[:, None, :, None]
        allowed = (keys <= query) & (keys > query - window)
        return torch.zeros(allowed.shape, dtype=dtype, device=positions.device).masked_fill_(~allowed, float("-inf"))
