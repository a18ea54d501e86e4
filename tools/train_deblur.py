"""Train the DiffEvent deblurrer, stage by stage.

    python -m evpipe.tools.train_deblur --preset tiny --stage enhance   # 1. f(E): fit y = f(E) x
    python -m evpipe.tools.train_deblur --preset tiny --stage priors    # 2. diffusion priors of x and r
    python -m evpipe.tools.train_deblur --preset tiny --stage tune      # 3. guidance weights on val
    python -m evpipe.tools.train_deblur --preset tiny --stage distill   # 4. guided teacher -> student
    python -m evpipe.tools.train_deblur --preset tiny --stage all       # 1-4 in order
    python -m evpipe.tools.train_deblur --preset tiny-rt --stage distill --start-from tiny
                                            # the compact student on tiny's f(E), priors and guidance

Each stage reads and rewrites ``diffevent.pt`` in ``--out`` (default: the shipped directory
``nodes/deblur/checkpoints/<preset>``) and appends its losses and wall time to ``train_log.json``
there. Data: :class:`evpipe.tools.dataset.DeblurView` (the stored blurry frames) of the dataset built
by ``python -m evpipe.tools.make_dataset --preset tiny``; the raw E of every sample is computed once
with ``evpipe.kernels.edi_integral`` (the preset's c and sample count) and cached as float16 under
``$EVPIPE_CACHE/deblur/`` (default ``~/.cache/evpipe/deblur/``). Training uses the train split;
``tune`` uses the val split. Seeded (``--seed``): a rerun on the same machine and thread count
reproduces a checkpoint.

Stage recipes:
- enhance: random ``crop`` crops with random flips/rotations; loss mean (f(E) x - y)² (the
  residual-free EBRD fit); ``r_scale`` = 1 / std(y - f(E) x) and ``x_scale`` = 1 / std(x - y) over
  the train split are stored.
- priors: v-prediction denoising loss (:func:`evpipe.nodes.diffusion.diffusion_loss`) of x (as x - y)
  and of r = y - f(E) x (times r_scale), both conditioned on (y, f(E)); f frozen; one Adam over both.
- tune: a grid around the preset's weights (s in {0, s/2, s, 5s/3}, λ in {0, λ}, s' in {s', 2s'},
  λ' in {0, λ'}), scored by PSNR of the guided ``teacher_steps`` sampler on ``--tune-samples`` random
  val crops; the best is stored.
- distill: the guided teacher (Algorithm 1, ``fEx+r``, tuned weights, temperature 0) is run on
  ``distill_pairs`` random training crops; the student (conditioned on the voxel grid as well) learns
  to reproduce its output in ``student_steps`` unguided DDIM steps (output distillation, Luhman &
  Luhman 2021: the guidance is paid for once, at training time) with weight ``distill_weight``,
  beside a data term on fresh training crops against the sharp frames, so the student is not capped
  at the teacher's quality. Both terms are the log of the per-sample MSE (:func:`evpipe.tools.training.log_mse`);
  the teacher term's floor is the teacher's own MSE against that crop's sharp frame, so the student is
  not pulled towards the teacher more closely than the teacher is right (with the 60 dB floor of the
  data term it copied the tiny teacher's errors on still frames and lost 0.30 dB on the test split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from evpipe.nodes import diffusion
from evpipe.nodes.deblur.checkpoint import CHECKPOINTS, FILE, resolve_dir
from evpipe.nodes.deblur.models import E_MAX, E_MIN, DiffEvent, GuidedTeacher, ModelConfig
from evpipe.nodes.deblur.presets import PRESETS, Guidance, Preset, StageSchedule, get_preset
from evpipe.nodes.deblur.sampler import exposure_edi
from evpipe.nodes.predict.checkpoint import CheckpointError, load_part, save_part
from evpipe.runtime.engines.onnx_export import export_cache_dir
from evpipe.tools import command_line
from evpipe.tools.dataset import DeblurView, EventDataset
from evpipe.tools.training import log_mse, optimise, sample_mse, stage_parser, with_iters

STAGES = ("enhance", "priors", "tune", "distill")
WARMUP_ITERS = 30
# The stored blur of the tiny dataset is mild (blurry vs sharp ≈ 37 dB); training also sees every frame
# blurred over 0.5-1.9 APS intervals (DeblurView's synthesis), which is where events matter most.
STRONG_BLUR = (0.5, 1.9)


@dataclass
class DeblurData:
    """Every deblur sample of a split in memory: blurry, sharp, edi float16 (N, 1, H, W) and the
    exposure's voxel grid float16 (N, bins, H, W)."""

    blurry: torch.Tensor
    sharp: torch.Tensor
    edi: torch.Tensor
    voxel: torch.Tensor

    def __len__(self) -> int:
        return len(self.blurry)


FIELDS = ("blurry", "sharp", "edi", "voxel")


def cache_path(root: Path, split: str, c: float, samples: int, bins: int, exposure: tuple[float, float] | None
               ) -> Path:
    meta = (root / "dataset.json").read_bytes()
    key = hashlib.sha256(meta + f"{split}-{c}-{samples}-{bins}".encode()).hexdigest()[:16]
    suffix = "" if exposure is None else f"-exposure{exposure[0]}-{exposure[1]}"
    return export_cache_dir("deblur") / f"{root.name}-{split}-{key}{suffix}.npz"


def load_split(dataset: str | Path | None, split: str, c: float, samples: int, bins: int,
               exposure: tuple[float, float] | None = None) -> DeblurData:
    """The split's (blurry, sharp, raw E, voxel) arrays, from the cache or computed (and cached). ``exposure``
    None: the stored blurry frames; (low, high): blur synthesised by ``DeblurView`` over that many APS
    intervals (seed 0)."""
    ds = EventDataset(dataset, split)
    if ds.channels != 1:
        raise ValueError(f"{ds.root}: the deblurrer is gray-only; the dataset has {ds.channels} channels")
    path = cache_path(ds.root, split, c, samples, bins, exposure)
    if not path.is_file():
        view = DeblurView(ds, bins=bins, with_events=True, exposure_intervals=exposure)
        arrays: dict[str, list[np.ndarray]] = {name: [] for name in FIELDS}
        for i in tqdm(range(len(view)), desc=f"E for {split}", unit="frame"):
            s = view[i]
            arrays["blurry"].append(s["blurry"].astype(np.float16))
            arrays["sharp"].append(s["sharp"].astype(np.float16))
            edi = exposure_edi(s["events"], int(s["exposure_start"]), int(s["exposure_end"]), int(s["t"]),
                               ds.height, ds.width, c, samples)
            arrays["edi"].append(np.clip(edi[None], E_MIN, E_MAX).astype(np.float16))
            arrays["voxel"].append(s["voxel"].astype(np.float16))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp.npz")
        np.savez(partial, **{k: np.stack(v) for k, v in arrays.items()})
        partial.replace(path)
    with np.load(path) as f:
        data = DeblurData(*(torch.from_numpy(f[k]) for k in FIELDS))
    data.edi.clamp_(E_MIN, E_MAX)
    return data


def load_training_split(dataset: str | Path | None, split: str, c: float, samples: int, bins: int) -> DeblurData:
    """The stored blurry frames of ``split`` plus the same frames blurred over :data:`STRONG_BLUR` intervals."""
    parts = [load_split(dataset, split, c, samples, bins, exposure) for exposure in (None, STRONG_BLUR)]
    return DeblurData(*(torch.cat([getattr(p, k) for p in parts]) for k in FIELDS))


def random_crops(data: DeblurData, batch: int, crop: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blurry, sharp, edi, voxel) float32 (batch, C, crop, crop): random samples, crops, flips and 90°
    turns (the same for every array of a sample: E and the voxel grid are per pixel, so the EBRD
    relation is preserved)."""
    n, _, h, w = data.blurry.shape
    index = torch.randint(0, n, (batch,), generator=generator)
    top = torch.randint(0, h - crop + 1, (batch,), generator=generator)
    left = torch.randint(0, w - crop + 1, (batch,), generator=generator)
    flips = torch.randint(0, 2, (batch, 2), generator=generator)
    turns = torch.randint(0, 4, (batch,), generator=generator)
    out = []
    for images in (getattr(data, name) for name in FIELDS):
        crops = []
        for b in range(batch):
            image = images[index[b], :, top[b]:top[b] + crop, left[b]:left[b] + crop].float()
            if flips[b, 0]:
                image = image.flip(-1)
            if flips[b, 1]:
                image = image.flip(-2)
            crops.append(torch.rot90(image, int(turns[b]), (-2, -1)))
        out.append(torch.stack(crops))
    return out[0], out[1], out[2], out[3]


def lr_at(schedule: StageSchedule, step: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < WARMUP_ITERS:
        return schedule.lr * (step + 1) / WARMUP_ITERS
    progress = (step - WARMUP_ITERS) / max(1, schedule.iters - WARMUP_ITERS)
    return schedule.lr * (0.1 + 0.45 * (1 + np.cos(np.pi * progress)))


def psnr_torch(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """Mean PSNR (dB, peak 1) over a batch (B, 1, H, W)."""
    mse = sample_mse(estimate.clamp(0, 1), reference).clamp(min=1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


class Trainer:
    def __init__(self, preset: Preset, out: Path, dataset: str | None, seed: int, tune_samples: int) -> None:
        self.preset, self.out, self.dataset, self.seed = preset, out, dataset, seed
        self.tune_samples = tune_samples
        self._train: DeblurData | None = None

    def generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + salt)

    @property
    def train(self) -> DeblurData:
        if self._train is None:
            p = self.preset
            self._train = load_training_split(self.dataset, "train", p.edi_c, p.edi_samples, p.event_bins)
        return self._train

    def student_settings(self) -> dict[str, object]:
        """The preset's student architecture, as ``ModelConfig`` fields."""
        p = self.preset
        return {"student_channels": p.student_channels, "student_mult": p.student_mult,
                "event_bins": p.event_bins, "student_head": p.student_head,
                "student_head_layers": p.student_head_layers, "student_e": p.student_e}

    def config(self) -> ModelConfig:
        p = self.preset
        return ModelConfig(p.enhance_channels, p.unet_channels, p.unet_mult, p.edi_c, p.edi_samples,
                           **self.student_settings())

    def load(self, new_student: bool = False) -> tuple[DiffEvent, Guidance]:
        """The checkpoint's model and guidance; ``new_student``: an untrained student of the preset's
        architecture instead of the checkpoint's (f(E) and the priors still loaded)."""
        data = load_part(self.out / FILE)
        config, state = ModelConfig(**data["config"]), data["state"]
        if new_student:
            config = dataclasses.replace(config, **self.student_settings())
        model = DiffEvent(config)
        if new_student:  # the checkpoint's student is replaced by the fresh one; everything else loads strictly
            state = {k: v for k, v in state.items() if not k.startswith("student.")}
            state.update({f"student.{k}": v for k, v in model.student.state_dict().items()})
        model.load_state_dict(state)
        return model, Guidance(**data["guidance"])

    def save(self, model: DiffEvent, weights: Guidance) -> None:
        save_part(self.out / FILE, model, config=model.config.to_dict(), preset=self.preset.name,
                  teacher_steps=self.preset.teacher_steps, student_steps=self.preset.student_steps[0],
                  guidance=weights.to_dict())

    def log(self, stage: str, record: dict) -> None:
        path = self.out / "train_log.json"
        log = json.loads(path.read_text()) if path.is_file() else {}
        log[stage] = record
        path.write_text(json.dumps(log, indent=1))

    # -- stages ---------------------------------------------------------------------------------------
    def stage_enhance(self) -> dict:
        torch.manual_seed(self.seed)
        model, p, data = DiffEvent(self.config()), self.preset, self.train
        g = self.generator(1)

        def loss_fn(step: int) -> torch.Tensor:
            blurry, sharp, edi, _ = random_crops(data, p.enhance.batch, p.crop, g)
            return (model.enhance(edi) * sharp - blurry).square().mean()

        losses = optimise(list(model.enhance.parameters()), p.enhance, loss_fn, "enhance f(E)", lr_at=lr_at)
        with torch.no_grad():
            raw, enhanced = [], []
            for i in range(0, len(data), 128):
                b, s, e = (t[i:i + 128].float() for t in (data.blurry, data.sharp, data.edi))
                raw.append((b - e.clamp(1e-2, 1e2) * s).flatten())
                enhanced.append((b - model.enhance(e) * s).flatten())
            raw_r, residual = torch.cat(raw), torch.cat(enhanced)
            model.r_scale.fill_(1.0 / float(residual.std()))
            model.x_scale.fill_(1.0 / float((data.sharp.float() - data.blurry.float()).std()))
        self.save(model, self.preset.guidance)
        return {"losses": losses[::10], "final_loss": float(np.mean(losses[-20:])),
                "train_mse_y_vs_Ex": float(raw_r.square().mean()),
                "train_mse_y_vs_fEx": float(residual.square().mean()),
                "r_scale": float(model.r_scale), "x_scale": float(model.x_scale)}

    def stage_priors(self) -> dict:
        torch.manual_seed(self.seed)
        model, weights = self.load()
        p, data = self.preset, self.train
        model.enhance.requires_grad_(False)
        g = self.generator(2)

        def loss_fn(step: int) -> torch.Tensor:
            blurry, sharp, edi, _ = random_crops(data, p.priors.batch, p.crop, g)
            with torch.no_grad():
                enhanced, cond = model.condition(blurry, edi)
                r = blurry - enhanced * sharp
            loss_x = diffusion.diffusion_loss(model.prior_x, model.x_to_data(sharp, blurry), model.schedule,
                                              cond={"cond": cond}, generator=g)
            loss_r = diffusion.diffusion_loss(model.prior_r, model.r_to_data(r), model.schedule,
                                              cond={"cond": cond}, generator=g)
            return loss_x + loss_r

        params = [*model.prior_x.parameters(), *model.prior_r.parameters()]
        losses = optimise(params, p.priors, loss_fn, "priors x, r", lr_at=lr_at)
        self.save(model, weights)
        return {"losses": losses[::10], "final_loss": float(np.mean(losses[-20:]))}

    def stage_tune(self) -> dict:
        model, _ = self.load()
        p = self.preset
        val = load_training_split(self.dataset, "val", p.edi_c, p.edi_samples, p.event_bins)
        blurry, sharp, edi, voxel = random_crops(val, self.tune_samples, p.crop, self.generator(4))
        base = p.guidance
        grid = [Guidance(s=s, lam=lam, s_r=s_r, lam_r=lam_r)
                for s in (0.0, base.s / 2, base.s, 5 * base.s / 3) for lam in (0.0, base.lam)
                for s_r in (base.s_r, 2 * base.s_r) for lam_r in (0.0, base.lam_r)]
        scores = []
        with torch.no_grad():
            for weights in tqdm(grid, desc="tune guidance", unit="setting"):
                out = GuidedTeacher(model, p.teacher_steps, weights)(blurry, edi, voxel, torch.zeros_like(blurry))
                scores.append((psnr_torch(sharp, out), weights))
        best_psnr, best = max(scores, key=lambda item: item[0])
        self.save(model, best)
        return {"val_crops": self.tune_samples, "best": best.to_dict(), "best_psnr": best_psnr,
                "grid": [{"psnr": value, **w.to_dict()} for value, w in scores]}

    def stage_distill(self) -> dict:
        torch.manual_seed(self.seed)
        model, weights = self.load(new_student=True)  # distillation starts from an untrained student
        p, data = self.preset, self.train
        model.requires_grad_(False)
        g = self.generator(3)
        teacher = GuidedTeacher(model, p.teacher_steps, weights)
        pairs: list[tuple[torch.Tensor, ...]] = []
        with torch.no_grad():  # (blurry, edi, voxel, teacher output, its MSE) batches; none without a teacher term
            for start in tqdm(range(0, p.distill_pairs if p.distill_weight > 0 else 0, 32), desc="teacher samples",
                              unit="batch"):
                blurry, sharp, edi, voxel = random_crops(data, min(32, p.distill_pairs - start), p.crop, g)
                out = teacher(blurry, edi, voxel, torch.zeros_like(blurry))
                pairs.append((blurry, edi, voxel, out, sample_mse(out, sharp)))
        teacher_set = [torch.cat(parts) for parts in zip(*pairs, strict=True)]
        steps = p.student_steps[0]
        model.student.requires_grad_(True)
        teacher_batch = max(1, p.distill.batch // 4)

        def student(blurry: torch.Tensor, edi: torch.Tensor, voxel: torch.Tensor) -> torch.Tensor:
            return model.student_sample(blurry, edi, voxel, torch.zeros_like(blurry), steps)

        def loss_fn(step: int) -> torch.Tensor:
            blurry, sharp, edi, voxel = random_crops(data, p.distill.batch, p.crop, g)
            loss = log_mse(student(blurry, edi, voxel), sharp)
            if teacher_set:
                index = torch.randint(0, len(teacher_set[0]), (teacher_batch,), generator=g)
                blurry_t, edi_t, voxel_t, target_t, error_t = (t[index] for t in teacher_set)
                # The teacher's own error as the floor: it is not matched more closely than it is right.
                loss = loss + p.distill_weight * log_mse(student(blurry_t, edi_t, voxel_t), target_t, error_t)
            return loss

        losses = optimise(list(model.student.parameters()), p.distill, loss_fn, f"distill {steps}-step student",
                          lr_at=lr_at)
        model.requires_grad_(False)
        self.save(model, weights)
        return {"pairs": len(teacher_set[0]) if teacher_set else 0, "student_steps": steps,
                "distill_weight": p.distill_weight, "losses": losses[::10], "final_loss": float(np.mean(losses[-20:]))}


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__, PRESETS, STAGES)
    parser.add_argument("--distill-pairs", type=int, default=None, help="override the teacher samples to distil from")
    parser.add_argument("--distill-weight", type=float, default=None,
                        help="override the teacher term's weight in the student's loss (0: data term only)")
    parser.add_argument("--tune-samples", type=int, default=32, help="val crops scored per guidance setting")
    parser.add_argument("--start-from", metavar="CHECKPOINT",
                        help="copy this checkpoint (a shipped name or a directory) into --out first, so later "
                             "stages build on its f(E), priors and guidance")
    args = parser.parse_args(argv)
    preset = with_iters(get_preset(args.preset), ("enhance", "priors", "distill"), args.iters, parser)
    if args.distill_pairs is not None:
        if args.distill_pairs < 1:
            parser.error(f"--distill-pairs must be >= 1, got {args.distill_pairs}")
        preset = dataclasses.replace(preset, distill_pairs=args.distill_pairs)
    if args.distill_weight is not None:
        if not args.distill_weight >= 0:
            parser.error(f"--distill-weight must be >= 0, got {args.distill_weight}")
        preset = dataclasses.replace(preset, distill_weight=args.distill_weight)
    out = args.out or CHECKPOINTS / preset.name
    out.mkdir(parents=True, exist_ok=True)
    if args.start_from:
        try:
            source = resolve_dir(args.start_from) / FILE
        except CheckpointError as error:
            parser.error(f"--start-from: {error}")
        if source.resolve() != (out / FILE).resolve():
            shutil.copyfile(source, out / FILE)
    trainer = Trainer(preset, out, args.dataset, args.seed, args.tune_samples)
    command = command_line("evpipe.tools.train_deblur", argv)
    try:
        for stage in STAGES if args.stage == "all" else [args.stage]:
            start = time.perf_counter()
            record = getattr(trainer, f"stage_{stage}")()
            record.update(command=command, seconds=round(time.perf_counter() - start, 1))
            trainer.log(stage, record)
            print(f"{stage}: {json.dumps({k: v for k, v in record.items() if k not in ('losses', 'grid')})}")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
