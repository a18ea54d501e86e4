"""Train the DESSERT residual next-frame predictor, stage by stage.

    python tools/train_predictor.py --preset tiny --stage ae          # 1. KL image autoencoder (+ latent stats)
    python tools/train_predictor.py --preset tiny --stage ervae       # 2. ER-VAE event encoder (alignment + KL)
    python tools/train_predictor.py --preset tiny --stage diffusion   # 3. residual latent diffusion teacher
    python tools/train_predictor.py --preset tiny --stage distill     # 4. progressive distillation -> 4/2/1 steps
    python tools/train_predictor.py --preset tiny --stage refine      # 5. the node's student: data term on frames
    python tools/train_predictor.py --preset tiny --stage head        # 6. its full-resolution head
    python tools/train_predictor.py --preset tiny --stage ablations   # no-ervae, no-dlt, regression (+ short)
    python tools/train_predictor.py --preset tiny --stage all         # 1-6 and the ablations, in order

Each stage reads the previous stages' files from ``--out`` (default: the shipped directory
``nodes/predict/checkpoints/<preset>``) and writes its own there (see
:mod:`evpipe.nodes.predict.checkpoint` for the files). Data: the DLT view
(:class:`evpipe.tools.dataset.PredictionView`) of the dataset built by
``python -m evpipe.tools.make_dataset --preset tiny``; the train split is used, nothing else.
Everything is seeded (``--seed``, default 0): a rerun on the same machine and thread count
reproduces a checkpoint.

Stage recipes:
- ae: random ``ae_crop`` crops of the train split's APS frames with random flips, loss
  L1 + ``ae_kl_weight`` KL; then the latent statistics (``latent_scale``, ``residual_scale``,
  ``voxel_scale``: reciprocal standard deviations over the train split) are stored with it, and the
  event-integration base: (c, eps) fitted on 400 train pairs and ``ei_residual_scale``.
- ervae: z_event ~ q(z | voxel); loss mean (z_event - z_res)² + ``ervae_kl_weight`` KL, z_res the
  normalised residual latent z_target - z_anchor of every DLT pair (gaps 1..max_gap).
- diffusion: v-prediction denoising loss on the residual from the preset's ``base`` (z_target -
  z_base; ``event-integration`` for both presets, see ``ModelConfig``) conditioned on (z_event,
  z_base), cosine schedule, constant learning rate after a short warm-up, EMA weights saved.
- distill: progressive distillation (Salimans & Ho, 2022) from the ``teacher_steps``-step DDIM
  teacher, halving the steps each round (``distill.iters`` per round, half that for the rounds
  above 4 steps); the 4-, 2- and 1-step students are saved. Chosen over
  consistency distillation because it needs no extra model or metric, its target is exact for the
  deterministic DDIM teacher, and its intermediate rounds *are* the 4- and 2-step students.
- refine: each student of ``refine_steps`` (the 4-step one the node runs) starts from its distilled
  weights and its U-Net learns ``refine.iters`` steps more from the data term: the log of the
  per-sample MSE (:func:`evpipe.tools.training.log_mse`) between the whole prediction (its sampler from
  zero noise, decoded) and the true target frame, on DLT pairs; autoencoder and ER-VAE frozen, EMA
  weights saved. Distillation can only copy the teacher (which only matches event integration on
  the synthetic split); this term aims the student at the frames themselves, in the units the
  evaluation averages.
- head: each refined student gains a full-resolution head (``head_channels``; see
  ``Dessert.head_correction``), trained alone with the refine stage's data term on random
  ``head_crop`` crops; the frozen student's predictions (zero noise) of ``head_pairs`` random train
  pairs are computed once, so a step costs only the head. Run it after ``refine``, which writes the
  student without a head.
- ablations: each trained for ``ablation`` iterations, like ``short`` (the full model at that
  budget, their reference).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from tqdm import tqdm

from evpipe.nodes import diffusion
from evpipe.nodes.predict.checkpoint import CHECKPOINTS, half_state, load_module, load_part, save_part
from evpipe.nodes.predict.models import Dessert, ModelConfig, kl_to_standard_normal, sample_posterior
from evpipe.nodes.predict.presets import PRESETS, Preset, StageSchedule, get_preset
from evpipe.runtime.engines.onnx_export import export_cache_dir
from evpipe.tools.training import log_mse, optimise, stage_parser, with_iters

STAGES = ("ae", "ervae", "diffusion", "distill", "refine", "head", "ablations")
ABLATION_STEPS = 16  # DDIM steps the ablations and their reference are evaluated with
WARMUP_ITERS = 50
EI_FIT_PAIRS = 400


# -- data ------------------------------------------------------------------------------------------
@dataclass
class PairData:
    """Every DLT pair of a split, held in memory.

    frames float16 (F, 1, H, W) in [0, 1]: the split's APS frames; anchor, target int64 (P,) indices
    into frames; k int64 (P,) gaps; voxels float16 (P, bins, H, W) of the events between.
    """

    frames: torch.Tensor
    anchor: torch.Tensor
    target: torch.Tensor
    k: torch.Tensor
    voxels: torch.Tensor


def load_pairs(dataset: str | None, split: str, max_gap: int, bins: int, size: int) -> PairData:
    """DLT pairs (gaps 1..max_gap) of ``split``, the same samples as ``PredictionView`` in the same order;
    frames must be ``size`` x ``size`` (gray, or RGB made gray). Cached on disk (see :func:`pairs_cache`)."""
    from evpipe.tools.dataset import EventDataset, luminance

    try:
        ds = EventDataset(dataset, split)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if (ds.height, ds.width) != (size, size):
        raise SystemExit(f"dataset {ds.root}: frames are {ds.height}x{ds.width}, the preset needs {size}x{size}")
    cache = pairs_cache(ds.root, split, max_gap, bins)
    if cache.is_file():
        return PairData(**torch.load(cache, weights_only=True))
    frames, anchors, targets, gaps, voxels = [], [], [], [], []
    offset = 0
    for seq in tqdm(ds.sequences, desc=f"loading {split} pairs", unit="seq"):
        aps = seq.aps_frames(np.arange(seq.n_aps))  # (M, C, H, W)
        gray = aps[:, 0] if seq.channels == 1 else luminance(np.moveaxis(aps, 1, -1))
        frames.append(torch.from_numpy(gray[:, None]).half())
        aps_t = seq.aps_t
        # One read of the sequence's events, sliced per pair: windows of different gaps overlap.
        events = seq.events_in(int(aps_t[0]) + 1, int(aps_t[-1]) + 1)
        for k in range(1, max_gap + 1):
            for a in range(seq.n_aps - k):
                # The view's window: t_anchor < t <= t_target.
                window = events.time_slice(int(aps_t[a]) + 1, int(aps_t[a + k]) + 1)
                voxels.append(torch.from_numpy(seq.voxel(window, bins)).half())
                anchors.append(offset + a)
                targets.append(offset + a + k)
                gaps.append(k)
        offset += seq.n_aps
    if not voxels:
        raise SystemExit(f"dataset {ds.root}: split {split!r} has no frame pairs")
    pairs = PairData(torch.cat(frames), torch.tensor(anchors), torch.tensor(targets), torch.tensor(gaps),
                     torch.stack(voxels))
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    torch.save(dataclasses.asdict(pairs), partial)
    partial.replace(cache)
    return pairs


def pairs_cache(root: Path, split: str, max_gap: int, bins: int) -> Path:
    """Where the pairs of a dataset split are cached: keyed by the dataset's metadata (which changes
    with every rebuild), the split, gaps and bins, under ``$EVPIPE_CACHE`` (or ~/.cache/evpipe)."""
    digest = hashlib.sha256((root / "dataset.json").read_bytes())
    digest.update(f"{root.resolve()}|{split}|{max_gap}|{bins}|v1".encode())
    return export_cache_dir("predict") / "pairs" / f"{digest.hexdigest()[:16]}.pt"


# -- helpers ---------------------------------------------------------------------------------------
def model_config(preset: Preset, bins: int, **overrides: object) -> ModelConfig:
    settings: dict[str, object] = {"base": preset.base, **overrides}
    return ModelConfig(bins=bins, ae_channels=preset.ae_channels, latent_channels=preset.latent_channels,
                       unet_channels=preset.unet_channels, unet_mult=preset.unet_mult,
                       unet_attention=preset.unet_attention, **settings)


def batches(n: int, batch: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless random index batches over range(n), reshuffled every epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch + 1 if n >= batch else 1, batch):
            yield order[start:start + batch]


def warmup_lr(schedule: StageSchedule, step: int) -> float:
    return schedule.lr * min(1.0, (step + 1) / WARMUP_ITERS)


def cosine_lr(schedule: StageSchedule, step: int) -> float:
    return warmup_lr(schedule, step) * 0.5 * (1 + math.cos(math.pi * step / schedule.iters))


class Ema:
    """Exponential moving average of a module's parameters (the copy is what gets saved)."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.source, self.decay = module, decay

    @torch.no_grad()
    def update(self) -> None:
        for avg, p in zip(self.module.parameters(), self.source.parameters(), strict=True):
            avg.lerp_(p, 1.0 - self.decay)


@torch.no_grad()
def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    return torch.cat([fn(x[i:i + chunk].float()) for i in range(0, len(x), chunk)])


# -- stages ----------------------------------------------------------------------------------------
class Trainer:
    """Runs the stages; ``pairs`` given skips loading the dataset (tests pass their own)."""

    def __init__(self, preset: Preset, out: Path, dataset: str | None, seed: int, bins: int,
                 pairs: PairData | None = None) -> None:
        self.preset, self.out, self.dataset, self.seed, self.bins = preset, out, dataset, seed, bins
        self._pairs = pairs

    def generator(self, salt: int) -> torch.Generator:
        torch.manual_seed(self.seed + salt)
        return torch.Generator().manual_seed(self.seed + salt)

    @property
    def pairs(self) -> PairData:
        if self._pairs is None:
            self._pairs = load_pairs(self.dataset, "train", self.preset.max_gap, self.bins, self.preset.image_size)
            print(f"train split: {len(self._pairs.frames)} frames, {len(self._pairs.k)} DLT pairs "
                  f"(gaps 1..{self.preset.max_gap})", file=sys.stderr)
        return self._pairs

    def new_model(self, **overrides: object) -> Dessert:
        """A freshly initialised model, seeded (initialisation draws from torch's global generator)."""
        torch.manual_seed(self.seed)
        return Dessert(model_config(self.preset, self.bins, **overrides))

    def base_model(self, load_ervae: bool = True, **overrides: object) -> Dessert:
        """A new model with the trained autoencoder (and, if ``load_ervae`` and used, the ER-VAE) loaded."""
        model = self.new_model(**overrides)
        ae = load_module(model.ae, self.out / "ae.pt")
        if int(ae["bins"]) != self.bins:
            raise SystemExit(f"{self.out / 'ae.pt'} was trained with {ae['bins']} bins, not {self.bins}")
        model.set_stats(**ae["stats"])
        if model.event_encoder is not None and load_ervae:
            load_module(model.event_encoder, self.out / "ervae.pt")
        return model.requires_grad_(False)

    # 1 ---------------------------------------------------------------------------------------------
    def stage_ae(self) -> list[float]:
        p, data = self.preset, self.pairs
        ae = self.new_model().ae
        g = self.generator(1)
        frames = data.frames
        crop = p.ae_crop

        def loss_fn(step: int) -> torch.Tensor:
            idx = torch.randint(len(frames), (p.ae.batch,), generator=g)
            y, x = (int(v) for v in torch.randint(0, p.image_size - crop + 1, (2,), generator=g))
            img = frames[idx, :, y:y + crop, x:x + crop].float()
            if torch.rand((), generator=g) < 0.5:
                img = img.flip(-1)
            mean, logvar = ae.encode(img)
            rec = ae.decode(sample_posterior(mean, logvar, g))
            kl = kl_to_standard_normal(mean, logvar) / img[0].numel()
            return (rec - img).abs().mean() + p.ae_kl_weight * kl

        losses = optimise(list(ae.parameters()), p.ae, loss_fn, "ae", lr_at=cosine_lr)
        ae.eval()
        latents = in_chunks(lambda x: ae.encode(x)[0], frames)
        latent_scale = 1.0 / float(latents.std())
        z = latents * latent_scale
        residual_scale = 1.0 / float((z[data.target] - z[data.anchor]).std())
        voxel_scale = 1.0 / float(data.voxels.float().std())
        rec = in_chunks(lambda x: ae.decode(ae.encode(x)[0]).clamp(0, 1), frames)
        mse = float(((rec - frames.float()) ** 2).mean())
        print(f"ae: train reconstruction PSNR {10 * math.log10(1 / mse):.2f} dB; latent_scale {latent_scale:.4f}, "
              f"residual_scale {residual_scale:.4f}, voxel_scale {voxel_scale:.4f}", file=sys.stderr)
        stats = {"latent_scale": latent_scale, "residual_scale": residual_scale, "voxel_scale": voxel_scale}
        stats.update(self.integration_stats(ae, stats))
        save_part(self.out / "ae.pt", ae, preset=p.name, bins=self.bins, stats=stats)
        return losses

    def integration_stats(self, ae: torch.nn.Module, stats: dict[str, float]) -> dict[str, float]:
        """The event-integration base (``ModelConfig.base``): (c, eps) fitted on up to
        ``EI_FIT_PAIRS`` evenly spaced train pairs (the evaluation baseline's fit), and the reciprocal
        standard deviation of the residual latent from it over every pair."""
        from evpipe.nodes.predict.integration import fit_integration

        d = self.pairs
        pick = torch.linspace(0, len(d.k) - 1, min(EI_FIT_PAIRS, len(d.k))).round().long()
        c, eps, fit_mse = fit_integration(d.frames[d.anchor[pick], 0].float().numpy(),
                                          d.frames[d.target[pick], 0].float().numpy(),
                                          d.voxels[pick].float().sum(1).numpy())
        model = self.new_model(base="event-integration")
        model.ae.load_state_dict(ae.state_dict())
        model.set_stats(**stats, ei_c=c, ei_eps=eps)
        z_base, z_target = self.base_latents(model)
        scale = 1.0 / float((z_target - z_base).std())
        print(f"ae: event integration c {c:.4f}, eps {eps:.4g} (fit MSE {fit_mse:.3g}); its residual_scale "
              f"{scale:.4f}", file=sys.stderr)
        return {"ei_c": c, "ei_eps": eps, "ei_residual_scale": scale}

    def base_latents(self, model: Dessert) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_base, z_target) of every pair, each (P, zc, h, w): the latents of the pair's base frame
        (``model.config.base``) and of its target, normalised by ``latent_scale``."""
        d = self.pairs
        z = in_chunks(model.encode_image, d.frames)
        if model.config.base == "anchor":
            return z[d.anchor], z[d.target]
        def encode_base(pair: torch.Tensor) -> torch.Tensor:
            pair = pair.long()
            return model.encode_image(model.base_image(d.frames[d.anchor[pair]].float(), d.voxels[pair].float()))

        return in_chunks(encode_base, torch.arange(len(d.k))), z[d.target]

    def latents(self, model: Dessert) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_base, normalised z_res = (z_target - z_base) · residual_scale) of every pair, each (P, zc, h, w)."""
        z_base, z_target = self.base_latents(model)
        return z_base, (z_target - z_base) * model.residual_scale

    # 2 ---------------------------------------------------------------------------------------------
    def stage_ervae(self) -> list[float]:
        p = self.preset
        model = self.base_model(load_ervae=False, base="anchor")  # z_event aligns to the paper's z_res
        z_res = self.latents(model)[1]
        encoder = model.event_encoder
        encoder.requires_grad_(True)
        g = self.generator(2)
        voxels = self.pairs.voxels
        it = batches(len(voxels), p.ervae.batch, g)

        def loss_fn(step: int) -> torch.Tensor:
            idx = next(it)
            mean, logvar = model.event_posterior(voxels[idx].float())
            z_event = sample_posterior(mean, logvar, g)
            kl = kl_to_standard_normal(mean, logvar) / mean[0].numel()
            return F.mse_loss(z_event, z_res[idx]) + p.ervae_kl_weight * kl

        losses = optimise(list(encoder.parameters()), p.ervae, loss_fn, "er-vae", lr_at=cosine_lr)
        baseline = float((z_res**2).mean())
        print(f"er-vae: alignment+KL loss {np.mean(losses[-50:]):.4f} (predicting zero residual: {baseline:.4f})",
              file=sys.stderr)
        save_part(self.out / "ervae.pt", encoder)
        return losses

    # 3 ---------------------------------------------------------------------------------------------
    def unet_data(self, model: Dessert) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(z_anchor, z_res, event conditioning of an index batch) for training ``model``'s U-Net."""
        z_anchor, z_res = self.latents(model)
        voxels = self.pairs.voxels
        if model.event_encoder is None:
            return z_anchor, z_res, lambda idx: model.event_condition(voxels[idx].float())
        z_event = in_chunks(model.event_condition, voxels)
        return z_anchor, z_res, lambda idx: z_event[idx]

    def train_unet(self, model: Dessert, schedule: StageSchedule, desc: str, mask: torch.Tensor | None = None,
                   snapshots: dict[int, Callable[[Dessert], None]] | None = None) -> tuple[Dessert, list[float]]:
        """Train ``model.unet`` (diffusion or regression per its config) on the pairs selected by ``mask``;
        returns (a copy of the model with the EMA weights, the loss per step). ``snapshots[step]`` is
        called with the EMA model after that many steps."""
        z_anchor, z_res, event_cond = self.unet_data(model)
        index = torch.arange(len(z_res)) if mask is None else torch.nonzero(mask).squeeze(1)
        g = self.generator(3)
        it = batches(len(index), schedule.batch, g)
        unet = model.unet.requires_grad_(True).train()
        ema = Ema(unet, self.preset.ema_decay)
        regression = model.config.mode == "regression"

        def loss_fn(step: int) -> torch.Tensor:
            idx = index[next(it)]
            cond = {"z_anchor": z_anchor[idx], "z_event": event_cond(idx)}
            if regression:
                pred = model.denoiser(torch.zeros_like(z_res[idx]), torch.zeros(len(idx)), **cond)
                return F.mse_loss(pred, z_res[idx])
            return diffusion.diffusion_loss(model.denoiser, z_res[idx], model.schedule,
                                            prediction=model.config.prediction, cond=cond, generator=g)

        def on_step(step: int) -> None:
            ema.update()
            if snapshots and step + 1 in snapshots:
                snapshots[step + 1](self.with_unet(model, ema.module))

        losses = optimise(list(unet.parameters()), schedule, loss_fn, desc, lr_at=warmup_lr, on_step=on_step)
        return self.with_unet(model, ema.module), losses

    @staticmethod
    def with_unet(model: Dessert, unet: torch.nn.Module) -> Dessert:
        clone = copy.deepcopy(model)
        clone.unet.load_state_dict(unet.state_dict())
        return clone.eval().requires_grad_(False)

    def save_unet(self, model: Dessert, variant: str, steps: int) -> None:
        head = {} if model.head is None else {"head": half_state(model.head)}
        save_part(self.out / f"unet-{variant}.pt", model.unet, config=model.config.to_dict(), steps=steps,
                  preset=self.preset.name, **head)

    def stage_diffusion(self) -> list[float]:
        model = self.base_model()
        snapshot = {self.preset.ablation.iters: lambda m: self.save_unet(m, "short", ABLATION_STEPS)}
        teacher, losses = self.train_unet(model, self.preset.diffusion, "diffusion", snapshots=snapshot)
        self.save_unet(teacher, "teacher", self.preset.teacher_steps)
        return losses

    # 4 ---------------------------------------------------------------------------------------------
    def stage_distill(self) -> list[float]:
        p = self.preset
        teacher = self.base_model()
        teacher.unet.load_state_dict(load_part(self.out / "unet-teacher.pt")["state"])
        teacher.eval()
        z_anchor, z_res, event_cond = self.unet_data(teacher)
        g = self.generator(4)
        steps = p.teacher_steps // 2
        losses: list[float] = []
        while steps >= 1:
            student = copy.deepcopy(teacher)
            unet = student.unet.requires_grad_(True).train()
            ema = Ema(unet, 0.95)
            it = batches(len(z_res), p.distill.batch, g)
            n = steps

            def loss_fn(step: int, student: Dessert = student, teacher: Dessert = teacher, it=it, n=n) -> torch.Tensor:
                idx = next(it)
                cond = {"z_anchor": z_anchor[idx], "z_event": event_cond(idx)}
                return diffusion.progressive_distillation_loss(
                    student.denoiser, teacher.denoiser, z_res[idx], student.schedule, n,
                    prediction=student.config.prediction, cond=cond, generator=g)

            # Rounds above the largest student only relay the teacher downwards and change it little:
            # half the iterations there.
            schedule = p.distill if steps <= max(p.student_steps) else replace(p.distill, iters=p.distill.iters // 2)
            losses += optimise(list(unet.parameters()), schedule, loss_fn, f"distill {2 * steps}->{steps}",
                               lr_at=cosine_lr, on_step=lambda step, ema=ema: ema.update())
            teacher = self.with_unet(student, ema.module)
            if steps in p.student_steps:
                self.save_unet(teacher, f"{steps}step", steps)
            steps //= 2
        return losses

    # 5 ---------------------------------------------------------------------------------------------
    def stage_refine(self) -> list[float]:
        p, data = self.preset, self.pairs
        losses: list[float] = []
        for steps in p.refine_steps:
            model = self.base_model()
            model.unet.load_state_dict(load_part(self.out / f"unet-{steps}step.pt")["state"])
            unet = model.unet.requires_grad_(True).train()
            ema = Ema(unet, p.ema_decay)
            g = self.generator(5)
            it = batches(len(data.k), p.refine.batch, g)

            def loss_fn(step: int, model: Dessert = model, it=it, steps: int = steps) -> torch.Tensor:
                idx = next(it)
                anchor, voxel = data.frames[data.anchor[idx]].float(), data.voxels[idx].float()
                noise = torch.zeros(len(idx), *model.noise_shape(*anchor.shape[-2:]))
                return log_mse(model.predict(anchor, voxel, noise, steps), data.frames[data.target[idx]].float())

            losses += optimise(list(unet.parameters()), p.refine, loss_fn, f"refine {steps}-step student",
                               lr_at=cosine_lr, on_step=lambda step, ema=ema: ema.update())
            self.save_unet(self.with_unet(model, ema.module), f"{steps}step", steps)
        return losses

    # 6 ---------------------------------------------------------------------------------------------
    def stage_head(self) -> list[float]:
        return [loss for steps in self.preset.refine_steps for loss in self.train_head(steps)]

    def train_head(self, steps: int) -> list[float]:
        """Add a head to the refined ``steps``-step student and train it alone (see the module's recipes)."""
        p, data = self.preset, self.pairs
        model = self.base_model(head_channels=p.head_channels)
        model.unet.load_state_dict(load_part(self.out / f"unet-{steps}step.pt")["state"])
        g = self.generator(6)
        pick = torch.randperm(len(data.k), generator=g)[:p.head_pairs]
        anchor, voxel = data.frames[data.anchor[pick]], data.voxels[pick]
        noise_shape = model.noise_shape(*anchor.shape[-2:])
        with torch.no_grad():  # the frozen student's (composed image, base) of every picked pair
            predicted = torch.cat([
                torch.cat(model.predict_composed(anchor[i].float(), voxel[i].float(),
                                                 torch.zeros(len(i), *noise_shape), steps), dim=1)
                for i in tqdm(torch.arange(len(pick)).split(32), desc=f"head: {steps}-step predictions")])
        crop = p.head_crop

        def loss_fn(step: int) -> torch.Tensor:
            i = torch.randint(len(pick), (p.head.batch,), generator=g)
            y, x = (int(v) for v in torch.randint(0, p.image_size - crop + 1, (2,), generator=g))
            window = (slice(None), slice(None), slice(y, y + crop), slice(x, x + crop))
            image, base = predicted[i][window].chunk(2, dim=1)
            a, v = anchor[i][window].float(), voxel[i][window].float()
            target = data.frames[data.target[pick[i]]][window].float()
            # Not clamped: a clamp would hide (and stop the gradient of) an overshoot the head must undo.
            return log_mse(image + model.head_correction(image, base, a, v), target)

        losses = optimise(list(model.head.requires_grad_(True).parameters()), p.head, loss_fn,
                          f"head of the {steps}-step student", lr_at=cosine_lr)
        self.save_unet(model.eval().requires_grad_(False), f"{steps}step", steps)
        return losses

    # ablations -------------------------------------------------------------------------------------
    def stage_ablations(self) -> list[float]:
        schedule = self.preset.ablation
        raw, losses = self.train_unet(self.base_model(events="raw"), schedule, "ablation no-ervae")
        self.save_unet(raw, "no-ervae", ABLATION_STEPS)
        no_dlt, more = self.train_unet(self.base_model(), schedule, "ablation no-dlt", mask=self.pairs.k == 1)
        self.save_unet(no_dlt, "no-dlt", ABLATION_STEPS)
        losses += more
        regression, more = self.train_unet(self.base_model(mode="regression"), schedule, "ablation regression")
        self.save_unet(regression, "regression", 1)
        return losses + more


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__, PRESETS, STAGES)
    parser.add_argument("--bins", type=int, default=5, help="voxel grid bins (default 5)")
    args = parser.parse_args(argv)
    preset = with_iters(get_preset(args.preset), ("ae", "ervae", "diffusion", "distill", "refine", "head", "ablation"),
                        args.iters, parser)
    out = args.out or CHECKPOINTS / preset.name
    trainer = Trainer(preset, out, args.dataset, args.seed, args.bins)
    for stage in STAGES if args.stage == "all" else (args.stage,):
        start = time.perf_counter()
        getattr(trainer, f"stage_{stage}")()
        print(f"stage {stage}: {time.perf_counter() - start:.0f} s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
