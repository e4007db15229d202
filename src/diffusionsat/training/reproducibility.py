"""Deterministic data order and per-sample randomness.

Noise, timesteps and dropout are drawn from a generator seeded by (run seed, epoch, sample index),
not from a global RNG. So a sample gets the same noise whether it is trained on one process or
two, in one uninterrupted run or in a run killed and resumed — the property the resume and
distributed tests check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def sample_generator(seed: int, epoch: int, sample_id: int | str) -> torch.Generator:
    """A CPU generator unique to (seed, epoch, sample index or key)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{sample_id}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


class EpochSampler(Sampler[int]):
    """A permutation of the dataset that depends only on (seed, epoch).

    ``accelerate`` shards its batches across processes; ``set_epoch`` is called each epoch.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True):
        if length < 1:
            raise ValueError("the training dataset is empty")
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.length))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())
