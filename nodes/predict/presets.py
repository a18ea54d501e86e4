"""Training presets of the DESSERT predictor: architecture plus every stage's schedule.

``tiny``: 128x128 gray, trains all stages (``--stage all``) on two CPU cores in 33 minutes (28.5
without the ablations; measured 2026-11-25 on an idle machine, see benchmarks/RESULTS.md; the same
stages added up to about 62 minutes on the slower machine of 2026-11-24); its checkpoints ship in
``nodes/predict/checkpoints/``. ``base``: 256x256 gray, wider networks,
attention at the coarsest U-Net level, longer schedules, meant for a GPU (code and configuration
only; it was not trained in this repository).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageSchedule:
    """Optimiser schedule of one training stage: ``iters`` Adam steps of ``batch`` samples."""

    iters: int
    batch: int
    lr: float


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int
    ae_channels: int
    latent_channels: int
    unet_channels: int
    unet_mult: tuple[int, ...]
    unet_attention: bool
    max_gap: int  # DLT: anchor-target gaps of 1..max_gap frames
    teacher_steps: int  # DDIM steps of the teacher sampler; a power of two (progressive distillation halves it)
    ae: StageSchedule
    ae_crop: int  # the autoencoder is fully convolutional and trains on random crops of this size
    ae_kl_weight: float
    ervae: StageSchedule
    ervae_kl_weight: float
    diffusion: StageSchedule
    distill: StageSchedule  # per halving round
    refine: StageSchedule  # each refined student: the data term on its predicted frames
    ablation: StageSchedule  # each ablation, and the full model's snapshot at the same budget
    head_channels: int  # the refined students' full-resolution head (ModelConfig.head_channels; 0: none)
    head: StageSchedule  # the head, trained alone on the frozen student's predictions
    head_pairs: int  # random train pairs whose predictions the head stage computes once and crops from
    head_crop: int
    ema_decay: float = 0.995
    student_steps: tuple[int, ...] = field(default=(4, 2, 1))
    refine_steps: tuple[int, ...] = field(default=(4,))  # the students the refine stage trains (the node's)
    base: str = "anchor"  # what the residual is taken from (ModelConfig.base)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny", image_size=128, ae_channels=16, latent_channels=4, unet_channels=32, unet_mult=(1, 2, 2),
        unet_attention=False, max_gap=4, teacher_steps=64,
        ae=StageSchedule(iters=3000, batch=16, lr=2e-3), ae_crop=64, ae_kl_weight=1e-6,
        ervae=StageSchedule(iters=1000, batch=16, lr=2e-3), ervae_kl_weight=1e-4,
        diffusion=StageSchedule(iters=3000, batch=32, lr=1e-3),
        distill=StageSchedule(iters=100, batch=24, lr=3e-4),
        refine=StageSchedule(iters=1200, batch=8, lr=3e-4),
        ablation=StageSchedule(iters=300, batch=32, lr=1e-3),
        head_channels=16, head=StageSchedule(iters=6000, batch=16, lr=1e-3), head_pairs=4000, head_crop=64,
        base="event-integration",
    ),
    "base": Preset(
        name="base", image_size=256, ae_channels=32, latent_channels=4, unet_channels=96, unet_mult=(1, 2, 3, 4),
        unet_attention=True, max_gap=6, teacher_steps=64,
        ae=StageSchedule(iters=60_000, batch=32, lr=5e-4), ae_crop=128, ae_kl_weight=1e-6,
        ervae=StageSchedule(iters=30_000, batch=32, lr=5e-4), ervae_kl_weight=1e-4,
        diffusion=StageSchedule(iters=200_000, batch=64, lr=2e-4),
        distill=StageSchedule(iters=10_000, batch=64, lr=1e-4),
        refine=StageSchedule(iters=20_000, batch=32, lr=5e-5),
        ablation=StageSchedule(iters=50_000, batch=64, lr=2e-4),
        head_channels=32, head=StageSchedule(iters=20_000, batch=32, lr=5e-4), head_pairs=8000, head_crop=128,
        ema_decay=0.9999, base="event-integration",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown predictor preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]
