"""Deterministic data order and per-sample randomness.

Noise, timesteps and dropout are drawn from a generator seeded by (run seed, epoch, sample index),
not from a global RNG. So a sample gets the same noise whether it is trained on one process or
two, in one uninterrupted run or in a run killed and resumed — the property the resume and
distributed tests check.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Sampler


def sample_generator(seed: int, epoch: int, sample_id: int | str) -> torch.Generator:
    """A CPU generator unique to (seed, epoch, sample index or key)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{sample_id}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


#: accelerate's per-process RNG state file in a checkpoint (``random_states_<rank>.pkl``).
RNG_STATE_FILE = "random_states_{}.pkl"


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from; the message names the file and the problem."""


def check_rng_state(checkpoint: str | os.PathLike, process_index: int = 0) -> Path:
    """Check the RNG state file of one process in ``checkpoint`` before resuming from it.

    ``accelerate.load_state`` ignores a missing or unreadable RNG state (it only logs at INFO),
    so a damaged checkpoint would resume with other random streams than the run it continues.
    Here the file is read (as accelerate reads it: ``torch.load(weights_only=True)``) and each
    state is tried on a throw-away generator; any problem raises :class:`CheckpointError`.
    """
    import numpy as np
    from accelerate.utils import load

    path = Path(checkpoint) / RNG_STATE_FILE.format(process_index)
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path}: the RNG state file is missing; the checkpoint is "
                              "incomplete (resume from another checkpoint, or start afresh)")
    try:
        states = load(path)
        random.Random().setstate(states["random_state"])
        np.random.RandomState().set_state(states["numpy_random_seed"])
        torch.Generator().set_state(states["torch_manual_seed"])
    except Exception as err:  # noqa: BLE001 - unpickling or a wrong state: any failure means damaged
        reason = (str(err).splitlines()[0] if str(err) else type(err).__name__).split(". ")[0][:160]
        if isinstance(err, KeyError):
            reason = f"no {err} entry"
        raise CheckpointError(f"cannot resume: {path}: unreadable RNG state ({reason}); the checkpoint is "
                              "damaged (resume from another checkpoint, or start afresh)") from None
    return path


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
