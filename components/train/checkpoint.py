"""Training checkpoints in the artifact store, so a restarted pod resumes where the last one stopped.

One file, ``<uri>/checkpoint.pt`` (a local folder or ``s3://`` prefix through ``components/storage.py``),
replaced whole at every save: written then renamed locally, one PUT on S3, so a pod killed mid-save leaves the
previous checkpoint intact. It holds everything the next epoch depends on: the model and optimizer states, the
epoch, every random-number state (the shuffling generator; torch's, per rank, which drives dropout; CUDA's;
NumPy's; Python's), the early-stopping state (best epoch, its weights and loss, epochs waited), the per-epoch
history, and what the caller adds (``extra``: the MLflow run id, so a resumed run logs into the same run).
Resuming from it gives the same final model and metrics as a run that was never interrupted (same seed, same
device; tested on CPU).

It is saved with plain tensors, lists and numbers only and read back with ``torch.load(weights_only=True)``: a
checkpoint from a shared bucket cannot run code when it is loaded.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from kfops.components import storage
from kfops.components.contracts import KfopsError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointStore:
    """Where checkpoints go (``uri``: folder or s3:// prefix) and how often (every ``every`` epochs)."""

    uri: str
    every: int = 1

    def __post_init__(self) -> None:
        if not self.uri:
            raise KfopsError("train: a checkpoint store needs a folder or s3:// URI")
        if self.every < 1:
            raise KfopsError(f"train: checkpoint_every must be at least 1 to checkpoint, got {self.every}")

    @property
    def file_uri(self) -> str:
        return storage.join(self.uri, CHECKPOINT_FILE)

    def due(self, epoch: int, last: bool) -> bool:
        """Save after epoch ``epoch`` (1-based)? Every ``every`` epochs, and after the last one."""
        return last or epoch % self.every == 0

    def save(self, state: dict[str, Any]) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save({"format": FORMAT_VERSION, **state}, buffer)
        storage.write_bytes(self.file_uri, buffer.getvalue())
        log.info("checkpoint after epoch %d written to %s", state.get("epoch", 0), self.file_uri)

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None when there is none yet."""
        import torch

        try:
            data = storage.read_bytes(self.file_uri)
        except FileNotFoundError:
            return None
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:
            raise KfopsError(f"train: cannot read checkpoint {self.file_uri}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
            raise KfopsError(f"train: {self.file_uri} is not a kfops checkpoint (format {FORMAT_VERSION})")
        return state


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state(generator, device: str) -> dict[str, Any]:
    """This process's random-number states, as tensors and numbers."""
    import torch

    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "generator": generator.get_state().cpu(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], generator, device: str) -> None:
    import torch

    generator.set_state(state["generator"])  # a CPU byte tensor, for CPU and CUDA generators alike
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if device == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
