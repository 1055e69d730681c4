"""A small, seeded, resumable training loop with an EMA copy, progress bar, loss CSV and plot.

One loop for every model this package trains: the caller gives the model, a ``loss_fn(model, step,
generator) -> loss`` that draws its own batch from ``generator`` (so a resumed run draws the same
batches as an uninterrupted one), and a :class:`TrainConfig`. ``out_dir`` receives
``checkpoint.pt`` (model, EMA, optimizer, scheduler, generator and loss history, written atomically
every ``checkpoint_every`` steps and at the end), ``loss.csv`` and ``loss.png``.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule of one training run (AdamW, linear warm-up then cosine decay)."""

    steps: int = 2000
    lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup < 0 or self.lr <= 0:
            raise ValueError(f"TrainConfig: need steps >= 1, warmup >= 0, lr > 0; got {self}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig: ema_decay must lie in [0, 1), got {self.ema_decay}")

    def lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class TrainResult:
    """The EMA model, the loss per logged step, the run's wall time (this process only) and the step it
    reached (below ``config.steps`` when ``max_seconds`` stopped it; rerun to resume)."""

    ema: torch.nn.Module
    losses: list[tuple[int, float]]
    seconds: float
    resumed_from: int
    steps_done: int


LossFn = Callable[[torch.nn.Module, int, torch.Generator], torch.Tensor]


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".partial")
    torch.save(state, tmp)
    tmp.replace(path)


def write_loss_files(out_dir: Path, losses: list[tuple[int, float]], title: str) -> None:
    """``loss.csv`` (step, loss) and ``loss.png`` (log-scale loss with a running mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out_dir / "loss.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows(losses)
    if not losses:
        return
    steps, values = zip(*losses)
    window = max(1, len(values) // 50)
    smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
              for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, values, lw=0.5, alpha=0.4, label="loss")
    ax.plot(steps, smooth, lw=1.5, label=f"running mean ({window})")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=120)
    plt.close(fig)


def train(model: torch.nn.Module, loss_fn: LossFn, config: TrainConfig, out_dir: Path, *,
          title: str = "training loss", progress: bool = True, max_seconds: float | None = None) -> TrainResult:
    """Train ``model`` in place for ``config.steps`` steps, resuming from ``out_dir/checkpoint.pt``.

    A checkpoint written with another config is refused (a resumed run must be the same run).
    ``max_seconds`` stops early (after a checkpoint) once this process has trained that long.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(config.seed)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, config.lr_factor)
    losses: list[tuple[int, float]] = []
    start = 0
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state["config"] != asdict(config):
            raise ValueError(f"{ckpt_path} was written by another run (config {state['config']}); "
                             "use a new output folder or the same config")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        generator.set_state(state["generator"].cpu())
        losses, start = state["losses"], state["step"]

    def checkpoint(step: int) -> None:
        _save_checkpoint(ckpt_path, {"config": asdict(config), "model": model.state_dict(), "ema": ema.state_dict(),
                                     "opt": opt.state_dict(), "sched": sched.state_dict(),
                                     "generator": generator.get_state(), "losses": losses, "step": step})

    t0 = time.perf_counter()
    model.train()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=title, disable=not progress)
    done = config.steps
    for step in bar:
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            done = step
            break
        loss = loss_fn(model, step, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p.detach(), 1 - decay)
        if step % config.log_every == 0 or step + 1 == config.steps:
            losses.append((step, float(loss.detach())))
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
        if (step + 1) % config.checkpoint_every == 0:
            checkpoint(step + 1)
    bar.close()
    checkpoint(done)
    model.eval()
    write_loss_files(out_dir, losses, title)
    return TrainResult(ema, losses, time.perf_counter() - t0, start, done)


__all__ = ["TrainConfig", "TrainResult", "train", "write_loss_files"]
