"""Train the unconditional image diffusion prior used by DDS video restoration (``nodes/restore``).

    python -m evpipe.tools.train_restore_prior --preset tiny            # writes nodes/restore/checkpoints/tiny/prior.pt

Data: every APS frame of the dataset's train split (``EventDataset``), random ``crop`` x ``crop``
crops with random flips and 90° rotations, scaled to [-1, 1]. Loss: the shared denoising loss
(:func:`evpipe.nodes.diffusion.diffusion_loss`, cosine schedule, v-prediction). Adam, linear warm-up
then cosine decay, gradient clipping at 1, EMA weights saved (fp16). ``--max-minutes`` stops early
(the saved record says how many steps were done). At the end the denoising loss on the val split
(fixed noise and times) is reported next to that of the all-zeros prediction, the reference a
model must beat. Seeded; one thread by default (the machine is shared).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evpipe.nodes import diffusion
from evpipe.nodes.restore.model import CHECKPOINT_DIR, ImagePrior, PriorConfig, save_prior, to_model
from evpipe.tools import command_line
from evpipe.tools.dataset import EventDataset


@dataclass(frozen=True)
class TrainPreset:
    model: PriorConfig
    steps: int
    batch: int
    crop: int
    lr: float
    warmup: int
    ema: float


PRESETS = {
    # About 25 minutes on one busy core of the 2-core development machine.
    "tiny": TrainPreset(PriorConfig(channels=16, mult=(1, 2, 2)), steps=4000, batch=16, crop=48, lr=2e-3,
                        warmup=100, ema=0.998),
    # For a GPU: the same recipe, wider and longer, on larger crops.
    "base": TrainPreset(PriorConfig(channels=64, mult=(1, 2, 2, 4), attention=True), steps=100_000, batch=64,
                        crop=96, lr=2e-4, warmup=1000, ema=0.9999),
}


def load_frames(dataset: EventDataset) -> torch.Tensor:
    """float16 (N, C, H, W) in [0, 1]: every APS frame of every sequence of a split."""
    frames = [seq.aps_frames(np.arange(seq.n_aps)) for seq in tqdm(dataset.sequences, desc="loading", unit="seq")]
    if not frames:
        raise ValueError(f"{dataset.root}: split {dataset.split!r} has no sequences")
    return torch.from_numpy(np.concatenate(frames)).half()


def random_batch(frames: torch.Tensor, batch: int, crop: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, C, crop, crop) float32 in [-1, 1]: random crops, flips and quarter turns."""
    n, _, height, width = frames.shape
    index = torch.randint(0, n, (batch,), generator=generator)
    top = torch.randint(0, height - crop + 1, (batch,), generator=generator)
    left = torch.randint(0, width - crop + 1, (batch,), generator=generator)
    flips = torch.randint(0, 2, (batch,), generator=generator)
    turns = torch.randint(0, 4, (batch,), generator=generator)
    out = []
    for i, y, x, f, r in zip(index.tolist(), top.tolist(), left.tolist(), flips.tolist(), turns.tolist(),
                             strict=True):
        patch = frames[i, :, y : y + crop, x : x + crop].float()
        patch = patch.flip(-1) if f else patch
        out.append(torch.rot90(patch, r, (-2, -1)))
    return to_model(torch.stack(out))


@torch.no_grad()
def validation_loss(model: torch.nn.Module | None, frames: torch.Tensor, schedule: diffusion.CosineSchedule,
                    prediction: str) -> float:
    """Mean squared error of the prediction target on whole val frames at 8 fixed times and fixed noise;
    ``model`` None scores the all-zeros prediction."""
    generator = torch.Generator().manual_seed(1234)
    x0 = to_model(frames.float())
    total = 0.0
    times = torch.linspace(0.05, 0.95, 8)
    for t_value in times:
        eps = torch.randn(x0.shape, generator=generator)
        t = t_value.expand(x0.shape[0])
        alpha, sigma = schedule.alpha_sigma(t)
        x_t = diffusion.q_sample(x0, t, eps, schedule)
        target = diffusion.target_for(prediction, x0, eps, alpha, sigma)
        pred = torch.zeros_like(target) if model is None else torch.cat(
            [model(x_t[i : i + 16], t[i : i + 16]) for i in range(0, len(x_t), 16)])
        total += float(torch.mean((pred - target) ** 2))
    return total / len(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evpipe.tools.train_restore_prior",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--dataset", type=Path, help="dataset folder (default: the tiny dataset)")
    parser.add_argument("--out", type=Path, help="checkpoint file (default nodes/restore/checkpoints/PRESET/prior.pt)")
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this long")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=250)
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    steps = args.steps or preset.steps
    if steps < 1:
        parser.error(f"--steps must be >= 1, got {steps}")
    out = args.out or CHECKPOINT_DIR / args.preset / "prior.pt"
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        train_frames = load_frames(EventDataset(args.dataset, "train"))
        val_frames = load_frames(EventDataset(args.dataset, "val"))[::5][:32]
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if min(train_frames.shape[-2:]) < preset.crop:
        print(f"error: frames {tuple(train_frames.shape[-2:])} are smaller than the crop {preset.crop}",
              file=sys.stderr)
        return 1
    model = ImagePrior(preset.model).to(args.device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.lr)
    schedule = diffusion.CosineSchedule()
    generator = torch.Generator().manual_seed(args.seed)
    record = {"command": command_line("evpipe.tools.train_restore_prior", argv),
              "preset": args.preset, "recipe": {**asdict(preset), "steps": steps}, "train_frames": len(train_frames)}
    start, losses, step = time.monotonic(), [], 0

    def save(final: bool) -> None:
        save_prior(out, ema, **record, steps_done=step, minutes=(time.monotonic() - start) / 60,
                   loss_last_100=float(np.mean(losses[-100:])) if losses else None, final=final)

    progress = tqdm(range(steps), desc=f"prior {args.preset}", unit="step", mininterval=10)
    for step in progress:
        lr = preset.lr * min(1.0, (step + 1) / preset.warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x0 = random_batch(train_frames, preset.batch, preset.crop, generator).to(args.device)
        loss = diffusion.diffusion_loss(model, x0, schedule, prediction=preset.model.prediction, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        decay = min(preset.ema, (1 + step) / (10 + step))  # short effective window early on
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        progress.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}", lr=f"{lr:.1e}", refresh=False)
        if (step + 1) % args.save_every == 0:
            save(final=False)
        if args.max_minutes is not None and time.monotonic() - start > 60 * args.max_minutes:
            print(f"stopping after {args.max_minutes} minutes at step {step + 1}", flush=True)
            break
    step += 1
    record["val_loss"] = validation_loss(ema.cpu(), val_frames, schedule, preset.model.prediction)
    record["val_loss_zero_prediction"] = validation_loss(None, val_frames, schedule, preset.model.prediction)
    save(final=True)
    print(f"saved {out}: {step} steps in {(time.monotonic() - start) / 60:.1f} min, val loss {record['val_loss']:.4f} "
          f"(all-zeros prediction {record['val_loss_zero_prediction']:.4f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
