"""The PyTorch training loop: an MLP (a binary or multiclass classifier, or a regression) trained on in-memory
tensors, fast on CPU and GPU.

Plain torch and numpy only (no MLflow, no KFP), so the loop can be benchmarked and reused anywhere. Why it is
fast: the whole split lives in one tensor on the training device; each epoch shuffles it once with a single
gather and then takes batches as contiguous slices (views, no copies, no per-sample Python as a
``DataLoader`` over a ``TensorDataset`` does). Losses are summed on the device and read once per epoch, so
no step waits for the host. On CUDA the forward, backward and optimizer step run in bf16 autocast and are
captured once as a CUDA graph that each step replays, which removes the per-kernel launch cost that dominates
a small network.

Under ``torchrun`` (``WORLD_SIZE`` > 1, process group joined by ``distributed.init_from_env``) the same loop
trains data-parallel with DistributedDataParallel: each rank takes its slice of every batch, losses and
validation outputs are combined across ranks so every rank sees the same metrics and stops at the same epoch
(see ``distributed.py``). With a ``CheckpointStore`` it saves a checkpoint every N epochs and resumes from the
latest one (``checkpoint.py``).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kfops.components.contracts import (
    AUTO_BALANCE_BELOW,
    TASK_BINARY,
    TASK_MULTICLASS,
    TASK_REGRESSION,
    KfopsError,
    StopTraining,
    TrainConfig,
)
from kfops.components.resources import cpu_limit

log = logging.getLogger(__name__)


EVAL_BATCH = 65_536
# A step with fewer multiply-adds than this trains on one CPU thread (cpu_threads).
SMALL_STEP_MACS = 1 << 24
GRAPH_WARMUP_STEPS = 3
MIN_STEPS_PER_EPOCH = 8
MIN_BATCH = 16


def resolve_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise KfopsError("train: device 'cuda' was requested but no CUDA device is available")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def cpu_threads(input_width: int, hidden_sizes: list[int], outputs: int, batch: int, processes: int = 1) -> int:
    """Intra-op threads for training on the CPU: one for a small network, else this process's share of the CPUs.

    A small step leaves a second thread little work and much waiting: with the default network (45 -> 64 -> 32
    -> 1, batch 512, 2.6M multiply-adds a step) 5 epochs took 4.5-8.3 s on one thread and 17.6-60.3 s on two while
    other jobs held the 2-CPU machine (5 interleaved rounds, median ratio 7x), and one thread is as fast on an
    idle one (benchmarks/RESULTS.md, "Local pipeline"). Larger networks keep a thread per CPU."""
    widths = [input_width, *hidden_sizes, outputs]
    macs = batch * sum(a * b for a, b in itertools.pairwise(widths))
    share = max(1, cpu_limit() // processes)
    return 1 if macs < SMALL_STEP_MACS else share


def build_mlp(input_width: int, hidden_sizes: list[int], dropout: float, outputs: int = 1):
    """Linear-ReLU-Dropout blocks ending in ``outputs`` values: one logit (binary: the positive class), one logit
    per class (multiclass: a softmax head), or one value (regression: the standardised target)."""
    from torch import nn

    layers: list[nn.Module] = []
    width = input_width
    for hidden in hidden_sizes:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


def balances_classes(task: str, y_train: np.ndarray, config: TrainConfig, outputs: int) -> bool:
    """Whether training weights a classifier's classes: ``balanced``, or ``auto`` when the rarest class is under
    ``AUTO_BALANCE_BELOW`` of the rows (binary: the positives) or under half an even share (multiclass)."""
    if task == TASK_REGRESSION or config.class_weighting == "none":
        return False
    if config.class_weighting == "balanced":
        return True
    n = len(y_train)
    if task == TASK_MULTICLASS:
        counts = np.bincount(y_train.astype(np.int64), minlength=outputs)
        return counts.min() / n < 0.5 / outputs
    return float(y_train.sum()) < AUTO_BALANCE_BELOW * n


def task_loss(task: str, y_train: np.ndarray, config: TrainConfig, outputs: int, device: str):
    """The training loss of ``task`` with the config's class weighting (``balances_classes``): binary
    cross-entropy with the positive class weighted, cross-entropy with per-class weights (each class ``n / (k x
    its rows)``), or squared error on the standardised target."""
    import torch

    n = len(y_train)
    if task == TASK_REGRESSION:
        return torch.nn.MSELoss()
    balance = balances_classes(task, y_train, config, outputs)
    if task == TASK_MULTICLASS:
        counts = np.bincount(y_train.astype(np.int64), minlength=outputs).astype(np.float64)
        weight = None
        if balance:
            weight = torch.tensor(n / (outputs * np.maximum(counts, 1.0)), dtype=torch.float32, device=device)
        return torch.nn.CrossEntropyLoss(weight=weight)
    positives = float(y_train.sum())
    pos_weight = None
    if balance and positives > 0:
        pos_weight = torch.tensor((n - positives) / positives, device=device)
    return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)


def task_outputs(task: str, logits):
    """What the network's raw outputs mean: the positive-class probability (binary), each class's probability
    (multiclass, rows of ``k``), or the standardised prediction itself (regression)."""
    import torch

    if task == TASK_MULTICLASS:
        return torch.softmax(logits, dim=-1)
    if task == TASK_REGRESSION:
        return logits
    return torch.sigmoid(logits)


def make_optimizer(model, config: TrainConfig, device: str, capturable: bool = False):
    import torch

    params = model.parameters()
    # Fused kernels update every parameter in one call: the per-tensor loop of the default implementation
    # costs more than the arithmetic for a network this small (about 1.4x steps/s on CPU at batch 32).
    options = {"fused": True}
    if capturable:
        options["capturable"] = True
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay, **options)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, **options)
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay, fused=True)


@dataclass
class FitResult:
    model: object  # torch.nn.Module, on the CPU, with the best epoch's weights
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")
    stopped_early: bool = False
    device: str = "cpu"
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    cuda_graphs: bool = False
    world_size: int = 1
    resumed_from_epoch: int = 0  # the checkpoint's epoch this run continued from (0: started afresh)


class _Stepper:
    """One optimisation step on a batch, eager or replayed from a captured CUDA graph."""

    def __init__(
        self, model, optimizer, loss_fn, device: str, use_graph: bool, batch_size: int, width: int, y_dtype=None
    ):
        import torch

        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        self.y_dtype = y_dtype or torch.float32
        self.loss_sum = torch.zeros((), device=device)
        self.graph = None
        self.autocast = device == "cuda"
        if use_graph:
            self._capture(batch_size, width)

    def _forward_backward(self, xb, yb, scale: float = 1.0):
        import torch

        if self.autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                logits = self.model(xb).squeeze(-1).float()
        else:
            logits = self.model(xb).squeeze(-1)
        loss = self.loss_fn(logits, yb)
        (loss * scale if scale != 1.0 else loss).backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach(), alpha=xb.shape[0])

    def _capture(self, batch_size: int, width: int) -> None:
        import torch

        self.static_x = torch.zeros((batch_size, width), device=self.device)
        self.static_y = torch.zeros((batch_size,), device=self.device, dtype=self.y_dtype)
        initial = [p.detach().clone() for p in self.model.parameters()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._forward_backward(self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._forward_backward(self.static_x, self.static_y)
        # Warm-up and capture stepped on zeros: put the weights and optimizer state back to where they started,
        # in place, because the graph holds their addresses.
        with torch.no_grad():
            for param, start in zip(self.model.parameters(), initial, strict=True):
                param.copy_(start)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()
            self.loss_sum.zero_()

    def step(self, xb, yb, scale: float = 1.0) -> None:
        """One step; ``scale`` weights the loss's gradient (a rank's share of a data-parallel batch)."""
        if self.graph is not None:
            self.static_x.copy_(xb, non_blocking=True)
            self.static_y.copy_(yb, non_blocking=True)
            self.graph.replay()
            return
        self.optimizer.zero_grad(set_to_none=True)
        self._forward_backward(xb, yb, scale)


def predict_logits(model, features, device: str, batch: int = EVAL_BATCH):
    """Logits for a float32 tensor already on ``device``, in large batches, with no autograd."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        for start in range(0, features.shape[0], batch):
            out.append(model(features[start : start + batch]).squeeze(-1).float())
    model.train()
    return torch.cat(out) if out else torch.zeros(0, device=device)


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    *,
    epoch_metrics: Callable[[np.ndarray], dict[str, float]] | None = None,
    checkpoint=None,
    resume: dict | None = None,
    checkpoint_extra: dict | None = None,
    task: str = TASK_BINARY,
    outputs: int = 1,
) -> FitResult:
    """Train the MLP with early stopping on validation loss; return the best epoch's model on the CPU.

    ``task`` picks the head and the loss (``task_loss``): binary (``y`` 0/1), multiclass (``y`` the class index,
    ``outputs`` classes) or regression (``y`` the standardised target; no ``val_accuracy``). ``epoch_metrics``
    gets the validation split's ``task_outputs``.

    ``on_epoch`` gets each epoch's row (``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``,
    ``epoch_seconds`` and what ``epoch_metrics`` adds from the validation probabilities); it may raise
    ``StopTraining``. ``checkpoint`` (a ``checkpoint.CheckpointStore``) saves every N epochs; training resumes
    from ``resume`` (a loaded checkpoint) or, when that is None, from the store's latest checkpoint.
    ``checkpoint_extra`` is saved with each checkpoint. In a torchrun process group it trains data-parallel."""
    import torch

    from kfops.components.train import distributed

    config.check()
    if len(x_train) == 0 or len(x_val) == 0:
        raise KfopsError("train: the training and validation splits must not be empty")
    dist_ctx = distributed.current()
    world = dist_ctx.world_size if dist_ctx else 1
    rank = dist_ctx.rank if dist_ctx else 0
    device = resolve_device(config.device)
    if dist_ctx and (device == "cuda") != (dist_ctx.backend == "nccl"):
        raise KfopsError(f"train: device {device} does not match the process group's backend {dist_ctx.backend}")
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)

    xt = torch.as_tensor(np.ascontiguousarray(x_train, dtype=np.float32), device=device)
    y_type = np.int64 if task == TASK_MULTICLASS else np.float32  # cross-entropy takes class indices
    yt = torch.as_tensor(np.ascontiguousarray(y_train, dtype=y_type), device=device)
    xv = torch.as_tensor(np.ascontiguousarray(x_val, dtype=np.float32), device=device)
    yv = torch.as_tensor(np.ascontiguousarray(y_val, dtype=y_type), device=device)
    n, width = xt.shape
    # Small data: batches small enough for MIN_STEPS_PER_EPOCH steps an epoch (150 rows in one batch of 512 would
    # be one step an epoch, and twelve epochs twelve steps), never under MIN_BATCH rows.
    batch = min(config.batch_size, n, max(MIN_BATCH, math.ceil(n / MIN_STEPS_PER_EPOCH)))
    if device == "cpu":
        per_process = dist_ctx.local_world_size if dist_ctx else 1
        torch.set_num_threads(cpu_threads(width, config.hidden_sizes, outputs, batch, per_process))
    model = build_mlp(width, config.hidden_sizes, config.dropout, outputs).to(device)
    network = model
    if dist_ctx:
        from torch.nn.parallel import DistributedDataParallel

        network = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)

    loss_fn = task_loss(task, np.asarray(y_train), config, outputs, device)
    eval_loss_fn = loss_fn

    # CUDA graphs capture one process's step; data-parallel steps synchronise gradients across processes.
    use_graph = device == "cuda" and config.cuda_graphs and dist_ctx is None
    # A captured graph has one batch shape: the last partial batch of an epoch is skipped (the data is
    # reshuffled every epoch, so every row is still trained on). Data-parallel: a last batch with fewer rows
    # than ranks is skipped, as each rank needs at least one row.
    steps = n // batch if use_graph else math.ceil(n / batch)
    if dist_ctx and n - (steps - 1) * batch < world:
        steps -= 1
    if steps < 1:
        raise KfopsError(f"train: {n} training rows cannot be split over {world} processes")
    optimizer = make_optimizer(network, config, device, capturable=use_graph)
    stepper = _Stepper(network, optimizer, loss_fn, device, use_graph, batch, width, y_dtype=yt.dtype)

    result = FitResult(model=model, device=device, cuda_graphs=use_graph, world_size=world)
    best_state, waited, first_epoch = None, 0, 0
    if checkpoint is not None and resume is None:
        resume = checkpoint.load()
    if resume is not None:
        best_state, waited, first_epoch = _restore(
            resume, config, model, optimizer, generator, result, device, rank, world
        )
    trained_samples = 0
    started = time.perf_counter()
    network.train()
    for epoch in range(first_epoch, config.epochs):
        if result.stopped_early:
            break
        epoch_start = time.perf_counter()
        perm = torch.randperm(n, device=device, generator=generator)
        xs, ys = xt[perm], yt[perm]
        stepper.loss_sum.zero_()
        for step in range(steps):
            lo = step * batch
            if dist_ctx:
                hi = min(lo + batch, n)
                a, b = distributed.slice_of(lo, hi, rank, world)
                # DDP averages gradients over ranks: weighting each rank's mean loss by its share of the batch
                # makes that average the gradient of the whole batch's mean loss.
                stepper.step(xs[a:b], ys[a:b], scale=(b - a) * world / (hi - lo))
            else:
                stepper.step(xs[lo : lo + batch], ys[lo : lo + batch])
        seen = steps * batch if use_graph else min(steps * batch, n)
        loss_total = float(stepper.loss_sum)
        if dist_ctx:
            loss_total = distributed.all_sum([loss_total], device)[0]
        trained_samples += seen
        val_logits = _validation_logits(model, xv, device, dist_ctx)
        val_loss = float(eval_loss_fn(val_logits, yv))
        train_loss = loss_total / seen
        val_prob = task_outputs(task, val_logits).float().cpu().numpy()
        row = {"epoch": float(epoch + 1), "train_loss": train_loss, "val_loss": val_loss}
        if task == TASK_MULTICLASS:
            row["val_accuracy"] = float((val_prob.argmax(axis=1) == np.asarray(y_val)).mean())
        elif task == TASK_BINARY:
            row["val_accuracy"] = float(((val_prob >= 0.5) == (y_val >= 0.5)).mean())
        row["epoch_seconds"] = time.perf_counter() - epoch_start
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise KfopsError(
                f"train: loss became {train_loss} (train) / {val_loss} (validation) in epoch "
                f"{epoch + 1}; lower the learning rate ({config.learning_rate})"
            )
        if epoch_metrics is not None:
            row.update(epoch_metrics(val_prob))
        result.history.append(row)
        _call_on_epoch(on_epoch, row, device, dist_ctx)
        if val_loss < result.best_val_loss - 1e-5:
            result.best_val_loss, result.best_epoch, waited = val_loss, epoch + 1, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            waited += 1
            if config.early_stopping_patience > 0 and waited >= config.early_stopping_patience:
                result.stopped_early = True
                log.info("early stop after epoch %d: no better validation loss for %d epochs", epoch + 1, waited)
        if checkpoint is not None:
            last = result.stopped_early or epoch + 1 == config.epochs
            if checkpoint.due(epoch + 1, last):
                state = _checkpoint_state(
                    config, epoch + 1, model, optimizer, generator, result, best_state, waited, device, dist_ctx
                )
                if rank == 0:
                    checkpoint.save({**state, "extra": dict(checkpoint_extra or {})})
    if device == "cuda":
        torch.cuda.synchronize()
    result.train_seconds = time.perf_counter() - started
    result.samples_per_second = trained_samples / max(result.train_seconds, 1e-9)
    cpu_model = build_mlp(width, config.hidden_sizes, config.dropout, outputs)
    cpu_model.load_state_dict(best_state if best_state is not None else model.state_dict())
    cpu_model.eval()
    result.model = cpu_model
    return result


def _validation_logits(model, xv, device: str, dist_ctx):
    """Validation logits of every row, on every rank (each rank scores its share, then all are gathered)."""
    if dist_ctx is None:
        return predict_logits(model, xv, device)
    from kfops.components.train import distributed

    total = xv.shape[0]
    a, b = distributed.slice_of(0, total, dist_ctx.rank, dist_ctx.world_size)
    return distributed.all_gather_rows(predict_logits(model, xv[a:b], device), total, dist_ctx.world_size)


def _call_on_epoch(on_epoch, row: dict[str, float], device: str, dist_ctx) -> None:
    """Call the callback; data-parallel, a rank that stops (or fails) stops every rank, never leaving the
    others waiting in the next collective."""
    if dist_ctx is None:
        if on_epoch is not None:
            on_epoch(row)
        return
    from kfops.components.train import distributed

    raised: BaseException | None = None
    try:
        if on_epoch is not None:
            on_epoch(row)
    except Exception as err:
        raised = err
    if distributed.any_rank(raised is not None, device):
        if raised is not None:
            raise raised
        raise StopTraining(f"train: another rank stopped after epoch {int(row['epoch'])}")


def _checkpoint_state(config, epoch, model, optimizer, generator, result, best_state, waited, device, dist_ctx):
    """What a checkpoint holds (every rank calls this: data-parallel, RNG states are gathered from all ranks)."""
    from kfops.components.train import checkpoint as ckpt
    from kfops.components.train import distributed

    rng = ckpt.rng_state(generator, device)
    rng_states = distributed.gather_objects(rng, dist_ctx.world_size) if dist_ctx else [rng]
    return {
        "epoch": epoch,
        "config": config.to_dict(),
        "world_size": dist_ctx.world_size if dist_ctx else 1,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "rng": rng_states,
        "best_state": best_state,
        "best_val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "waited": waited,
        "stopped_early": result.stopped_early,
        "history": [dict(r) for r in result.history],
    }


def _restore(state, config, model, optimizer, generator, result, device, rank, world):
    """Load a checkpoint into this run; returns (best_state, waited, first epoch to train)."""
    from kfops.components.train import checkpoint as ckpt

    saved = state.get("config", {})
    changed = {k: (saved.get(k), v) for k, v in config.to_dict().items() if k != "device" and saved.get(k) != v}
    if changed:
        details = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in sorted(changed.items()))
        raise KfopsError(
            f"train: the checkpoint (epoch {state.get('epoch')}) was written with another configuration ({details}); "
            "resume with the same configuration, or use another checkpoint location"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng_states = state["rng"]
    if len(rng_states) != world:
        log.warning("checkpoint from %d process(es), resuming with %d: dropout draws differ", len(rng_states), world)
    ckpt.restore_rng_state(rng_states[rank % len(rng_states)], generator, device)
    result.history = [dict(r) for r in state["history"]]
    result.best_val_loss, result.best_epoch = float(state["best_val_loss"]), int(state["best_epoch"])
    result.stopped_early = bool(state["stopped_early"])
    result.resumed_from_epoch = int(state["epoch"])
    log.info("resumed from the checkpoint after epoch %d", result.resumed_from_epoch)
    return state["best_state"], int(state["waited"]), int(state["epoch"])
