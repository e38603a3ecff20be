"""The LightningDataModule: memory-mapped token splits, fixed-size windows, FIM on the fly."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from engine.tokenizer import Tokenizer, hf_tokenizer_files, read_ranks

from .config import DataConfig
from .data import DataError, Documents, documents_of, load_data_tokenizer, load_split, read_meta
from .fim import apply_fim


class TokenWindows(Dataset):
    """Non-overlapping windows of block_size + 1 tokens (inputs and shifted targets)."""

    def __init__(self, tokens: np.ndarray, block_size: int, tokenizer: Tokenizer | None = None,
                 fim_rate: float = 0.0, spm_rate: float = 0.5, documents: Documents | None = None):
        if len(tokens) < block_size + 1:
            raise DataError(f"split has {len(tokens)} tokens, fewer than one window of {block_size + 1}")
        self.tokens, self.block_size, self.tokenizer = tokens, block_size, tokenizer
        self.fim_rate, self.spm_rate = fim_rate, spm_rate
        self.documents = documents or (Documents((), tokenizer.eot_id) if tokenizer else None)

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block_size

    def __getitem__(self, i: int) -> torch.Tensor:
        n = self.block_size + 1
        start = i * self.block_size
        window = np.asarray(self.tokens[start:start + n], dtype=np.int64)
        if self.fim_rate > 0:
            rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
            ids = apply_fim(window, self.tokenizer, rng, self.fim_rate, self.spm_rate, self.documents)
            if len(ids) < n:  # top up with the tokens that follow the window
                more = np.asarray(self.tokens[start + n:start + n + (n - len(ids))], dtype=np.int64)
                ids.extend(more.tolist())
                ids.extend([self.documents.eos_id] * (n - len(ids)))
            window = np.asarray(ids[:n], dtype=np.int64)
        return torch.from_numpy(window)


class CodeDataModule(L.LightningDataModule):
    """`block_size`: the tokens of one training window (at most the model's context)."""

    def __init__(self, data_dir: str | Path, block_size: int, config: DataConfig):
        super().__init__()
        self.data_dir, self.block_size, self.config = Path(data_dir), block_size, config
        self.meta = read_meta(self.data_dir)
        self.tokenizer = load_data_tokenizer(self.data_dir, self.meta)
        self.documents = documents_of(self.meta)
        self.fim_rate = config.fim_rate if self.tokenizer.fim else 0.0
        if config.fim_rate and not self.tokenizer.fim:
            print(f"{self.data_dir}: the tokenizer has no fill-in-the-middle tokens; training without FIM", flush=True)

    def tokenizer_files(self, context: int) -> dict[str, str]:
        """The tokenizer files of an exported model directory (Hugging Face's format)."""
        info = self.meta["tokenizer"]
        if info["kind"] == "hugging-face":
            return {name: (self.data_dir / name).read_text(encoding="utf-8") for name in info["files"]}
        return hf_tokenizer_files(read_ranks(self.data_dir / info["file"]), info["pat_str"], context)

    def setup(self, stage: str | None = None) -> None:
        c = self.config
        self.train_set = TokenWindows(load_split(self.data_dir, "train"), self.block_size, self.tokenizer,
                                      self.fim_rate, c.spm_rate, self.documents)
        self.val_set = TokenWindows(load_split(self.data_dir, "val"), self.block_size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.config.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.config.batch_size, shuffle=False,
                          num_workers=self.config.num_workers)

    def tokens_per_byte(self, split: str = "val") -> float:
        s = self.meta["splits"][split]
        return s["tokens"] / max(1, s["bytes"])

