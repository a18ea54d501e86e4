"""Train HiFI, the frame-interpolation diffusion model of ``evpipe.nodes.upsample``.

    python -m evpipe.tools.train_upsample --preset tiny --out nodes/upsample/checkpoints/tiny.pt

Data: ``InterpolationView`` triplets of the dataset's training split at APS spacings
``preset.spacings`` (the middle frame is the target), the two outer frames moved halfway along their
global translation where it explains them, as the cascade moves them (``alignment.motion_shift``). Each sample is
a random crop of side uniform in [patch, min(H, W)] (or ``--max-crop``) resized (area) to ``patch`` × ``patch`` — HiFI's
multi-resolution crop, so the model sees both native-resolution patches (what the finer cascade
levels feed it) and whole downscaled frames (what the coarsest level feeds it) — with horizontal,
vertical and temporal flips (each p = 0.5). The low-resolution estimate is the target downsampled ×2
(area) and bilinearly upsampled back, plus Gaussian noise of standard deviation U(0,
``estimate_noise``) (conditioning augmentation: at inference the estimate is the previous level's
imperfect prediction); it is replaced by zeros for ``drop`` (0.5) of the samples so one model also
does the base level. HiFI computes its estimates with the trained base model offline; ground truth
plus noise is our cheaper stand-in. The diffusion data is the middle frame's residual from the blend
of its two inputs (``HiFI.to_data``; ``residual_scale`` is measured on 32 training batches before
the first step).
With ``--real-clips`` the triplets come instead from the real video clips of the dataset's training split
(its ``sources`` of kind ``clip``: the ``video_gallery`` training clips, ``video_cockatoo``,
``video_bedroom``), read at ``--width`` px wide, as luma: the scale and texture the finer cascade levels
meet on a user's video; ``--start-from`` fine-tunes a checkpoint (its residual scale kept).

Loss: L1 on v (``evpipe.nodes.diffusion.diffusion_loss(norm="l1")``), Adam with linear warm-up and
a cosine decay to a tenth of the rate, EMA weights saved (float16) every ``--save-every`` steps and at the end.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)

from evpipe.nodes import diffusion
from evpipe.nodes.colour import gray_unit
from evpipe.nodes.upsample.alignment import align_to_middle, motion_shift
from evpipe.nodes.upsample.model import HiFI, HiFIConfig, load_checkpoint, save_checkpoint, to_model
from evpipe.tools.dataset import EventDataset, default_dataset_path
from evpipe.tools.evaluate.videos import read_clip


@dataclass(frozen=True)
class TrainPreset:
    name: str
    model: HiFIConfig
    iters: int
    batch: int
    lr: float
    spacings: tuple[int, ...] = (1, 2)
    drop: float = 0.5
    estimate_noise: float = 0.05  # in [0, 1] image units
    warmup: int = 100
    ema_decay: float = 0.995
    # Largest crop side (px) before the resize to the patch; None: the frame's shorter side.
    max_crop: int | None = None


PRESETS: dict[str, TrainPreset] = {
    # About 25 minutes on this repository's 2 CPU cores (6 it/s with nothing beside it); its checkpoint ships.
    "tiny": TrainPreset("tiny", HiFIConfig(channels=1, width=24, mult=(1, 2, 2), attention=False, patch=32),
                        iters=9000, batch=24, lr=1e-3),
    # For a GPU (not trained here): wider, one more level, attention at the bottom, larger patches.
    "base": TrainPreset("base", HiFIConfig(channels=1, width=96, mult=(1, 2, 3, 4), attention=True, patch=128),
                        iters=200_000, batch=64, lr=1e-4, warmup=5000, ema_decay=0.9999),
}


def load_sequences(dataset: EventDataset) -> list[np.ndarray]:
    """Every sequence's APS frames, float32 (N, C, H, W) in [0, 1], held in memory for training."""
    return [seq.aps_frames(np.arange(seq.n_aps)).astype(np.float32) for seq in dataset.sequences]


def real_clip_sequences(dataset: EventDataset, width: int, max_frames: int) -> list[np.ndarray]:
    """The luma of the first ``max_frames`` frames of every real clip in the dataset's training split,
    float32 (N, 1, H, W) in [0, 1], scaled to ``width`` px wide."""
    clips = [Path(source["origin"]) for source in dataset.meta.get("sources", {}).values()
             if source.get("kind") == "clip" and source.get("split") == "train"]
    if not clips:
        raise ValueError(f"{dataset.root}: the dataset's training split has no real clips")
    return [np.stack([gray_unit(frame) for frame in read_clip(path, width, max_frames)])[:, None] for path in clips]


class TripletSampler:
    """Random augmented training batches from sequences of frames (each float32 (N, C, H, W) in [0, 1])."""

    def __init__(self, sequences: list[np.ndarray], spacings: tuple[int, ...], patch: int, seed: int,
                 max_crop: int | None = None) -> None:
        self.frames = sequences
        self.triplets = np.array([(s, a, d) for s, frames in enumerate(self.frames) for d in spacings
                                  for a in range(len(frames) - 2 * d)], dtype=np.int64)
        if len(self.triplets) == 0:
            raise ValueError(f"no training triplets at spacings {spacings} (sequences too short or none)")
        self.patch, self.max_crop = patch, max_crop
        self.rng = np.random.default_rng(seed)
        self.shifts: dict[tuple[int, int, int], tuple[float, float]] = {}

    def aligned(self, sequence: int, first: int, spacing: int) -> torch.Tensor:
        """Frames ``first``, ``first + spacing``, ``first + 2 * spacing`` of a sequence (3, C, H, W), the
        outer two moved towards the middle as the cascade moves them (``alignment.align_to_middle``;
        the shifts are cached: each triplet is drawn many times)."""
        triplet = torch.from_numpy(self.frames[sequence][[first, first + spacing, first + 2 * spacing]])
        key = (sequence, first, spacing)
        if key not in self.shifts:
            self.shifts[key] = motion_shift(triplet[0], triplet[2])
        frame0, frame1 = align_to_middle(triplet[0], triplet[2], self.shifts[key])
        return torch.stack([frame0, triplet[1], frame1])

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame0, middle, frame1), each float32 (size, C, patch, patch) in [0, 1]."""
        out = []
        for s, a, d in self.triplets[self.rng.integers(0, len(self.triplets), size)]:
            triplet = self.aligned(s, a, d)  # (3, C, H, W)
            height, width = triplet.shape[-2:]
            side = int(self.rng.integers(self.patch, min(height, width, self.max_crop or height) + 1))
            y, x = int(self.rng.integers(0, height - side + 1)), int(self.rng.integers(0, width - side + 1))
            crop = triplet[..., y:y + side, x:x + side]
            if side != self.patch:
                crop = F.interpolate(crop, size=(self.patch, self.patch), mode="area")
            if self.rng.random() < 0.5:
                crop = crop.flip(-1)
            if self.rng.random() < 0.5:
                crop = crop.flip(-2)
            if self.rng.random() < 0.5:
                crop = crop.flip(0)  # temporal flip: frame1 -> frame0
            out.append(crop)
        stack = torch.stack(out)  # (size, 3, C, p, p)
        return stack[:, 0], stack[:, 1], stack[:, 2]


def low_res_estimate(middle: torch.Tensor, noise_std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The training stand-in for the previous level's prediction: ``middle`` (B, C, h, w) in [0, 1]
    downsampled ×2 (area), upsampled back (bilinear) and noised with per-sample std ``noise_std`` (B,)."""
    low = F.interpolate(middle, scale_factor=0.5, mode="area")
    up = F.interpolate(low, size=middle.shape[-2:], mode="bilinear", align_corners=False)
    noise = torch.randn(up.shape, generator=generator) * noise_std[:, None, None, None]
    return up + noise


def residual_scale(model: HiFI, sampler: TripletSampler, batch: int, batches: int = 32) -> float:
    """1 / the standard deviation of ``model``'s diffusion data at unit scale (:meth:`HiFI.to_data`: the
    middle frame's residual from the blend) over ``batches`` batches of ``sampler``: the scale that
    gives the data unit variance."""
    unscaled = [model.to_data(to_model(middle), to_model(frame0), to_model(frame1)) / model.residual_scale
                for frame0, middle, frame1 in (sampler.batch(batch) for _ in range(batches))]
    return float(1.0 / torch.cat(unscaled).std().clamp(min=1e-4))


def train(preset: TrainPreset, sequences: list[np.ndarray], out: Path, seed: int = 0, save_every: int = 250,
          max_minutes: float | None = None, progress: bool = True, source: str = "",
          start: HiFI | None = None) -> dict[str, float]:
    """Train on ``sequences`` (see :func:`load_sequences`; ``source`` names them in the checkpoint) and save
    ``out`` (EMA weights); returns {"iters", "minutes", "final_loss"} (loss: EMA of the batch
    L1, smoothing 0.98). Stops early after ``max_minutes`` (still saving). ``start``: fine-tune these
    weights (its config must be the preset's; its residual scale is kept)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = preset.model
    if any(frames.shape[1] != config.channels for frames in sequences):
        raise ValueError(f"{source or 'training data'}: frames must have {config.channels} channel(s) for preset "
                         f"{preset.name!r}")
    sampler = TripletSampler(sequences, preset.spacings, config.patch, seed, preset.max_crop)
    model = HiFI(config)
    if start is not None:
        if start.config != config:
            raise ValueError(f"--start-from: its model {start.config} is not preset {preset.name!r}'s {config}")
        model.load_state_dict(start.state_dict())
    else:  # its own sampler (seed + 1): the training batches stay the same draws as without this step
        model.residual_scale.fill_(residual_scale(model, TripletSampler(sequences, preset.spacings, config.patch,
                                                                        seed + 1), preset.batch))
    ema = HiFI(config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=preset.lr)
    start = time.monotonic()
    smoothed = math.nan
    step = 0
    bar = tqdm(range(preset.iters), desc=f"train HiFI {preset.name}", unit="it", disable=not progress, mininterval=5)
    for step in bar:
        for group in optimizer.param_groups:
            # Linear warm-up, then a cosine decay to a tenth: the last steps fit the fine residual.
            group["lr"] = (preset.lr * min(1.0, (step + 1) / preset.warmup)
                           * (0.55 + 0.45 * math.cos(math.pi * step / preset.iters)))
        frame0, middle, frame1 = sampler.batch(preset.batch)
        size = middle.shape[0]
        estimate = low_res_estimate(middle, torch.rand(size, generator=generator) * preset.estimate_noise, generator)
        available = (torch.rand(size, generator=generator) >= preset.drop).float()
        frame0, frame1 = to_model(frame0), to_model(frame1)
        estimate = model.to_data(to_model(estimate), frame0, frame1) * available[:, None, None, None]
        cond = {"frame0": frame0, "frame1": frame1, "estimate": estimate, "available": available}
        loss = diffusion.diffusion_loss(model, model.to_data(to_model(middle), frame0, frame1), model.schedule,
                                        prediction="v", cond=cond, generator=generator, norm="l1")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
                p_ema.lerp_(p, 1.0 - preset.ema_decay)
        smoothed = loss.item() if math.isnan(smoothed) else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
        minutes = (time.monotonic() - start) / 60
        if (step + 1) % save_every == 0:
            save_checkpoint(ema, out, {"preset": preset.name, "iters": step + 1, "loss": smoothed})
        if max_minutes is not None and minutes >= max_minutes:
            bar.write(f"stopping after {step + 1} iterations: --max-minutes {max_minutes} reached")
            break
    bar.close()
    iters = step + 1
    minutes = (time.monotonic() - start) / 60
    save_checkpoint(ema, out, {"preset": preset.name, "iters": iters, "loss": smoothed, "minutes": minutes,
                               "dataset": source, "seed": seed})
    return {"iters": iters, "minutes": minutes, "final_loss": smoothed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evpipe.tools.train_upsample", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--dataset", type=Path, help=f"dataset folder (default {default_dataset_path()})")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    parser.add_argument("--iters", type=int, help="override the preset's iteration count")
    parser.add_argument("--max-minutes", type=float, help="stop (and save) after this many minutes")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--real-clips", action="store_true",
                        help="train on the real clips of the dataset's training split instead of its sequences")
    parser.add_argument("--width", type=int, default=640, help="--real-clips: frames scaled to this width")
    parser.add_argument("--max-frames", type=int, default=48, help="--real-clips: frames read per clip")
    parser.add_argument("--start-from", help="fine-tune this checkpoint (a shipped name or a .pt file)")
    parser.add_argument("--max-crop", type=int,
                        help="largest crop side in px before the resize to the patch (default: the frame's shorter "
                             "side); 4 x the patch matches the scales a 3-level cascade feeds the network")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.iters is not None:
        if args.iters < 1:
            parser.error(f"--iters must be >= 1, got {args.iters}")
        preset = replace(preset, iters=args.iters)
    if args.max_crop is not None:
        if args.max_crop < preset.model.patch:
            parser.error(f"--max-crop must be >= the patch ({preset.model.patch}), got {args.max_crop}")
        preset = replace(preset, max_crop=args.max_crop)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dataset = EventDataset(args.dataset, "train")
        sequences = (real_clip_sequences(dataset, args.width, args.max_frames) if args.real_clips
                     else load_sequences(dataset))
        start = load_checkpoint(args.start_from) if args.start_from else None
        source = f"{dataset.root} ({'real clips at ' + str(args.width) + ' px' if args.real_clips else 'sequences'})"
        result = train(preset, sequences, args.out, args.seed, args.save_every, args.max_minutes, source=source,
                       start=start)
    except (FileNotFoundError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {result['iters']} iterations in {result['minutes']:.1f} min, "
          f"final L1(v) {result['final_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
