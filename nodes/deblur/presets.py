"""Training and sampling presets of the DiffEvent deblurrer.

``tiny``: 128x128 gray, every stage trains on two (shared) CPU cores in about half an hour; its
checkpoints ship in ``nodes/deblur/checkpoints/tiny/``. ``tiny-rt``: ``tiny``
with the compact deployment student the deblur node runs by default, chosen by measurement for a live
full-sensor stream on two CPU cores: a 16-channel U-Net, a 16-channel 5-layer head, and the raw E in its
condition in place of f(E) (the enhancement net's full-resolution convolutions cost 4 ms of ONNX Runtime
time per 346x260 frame; the student learns the correction itself) — about 12 ms per 346x260 frame against
51 ms for ``tiny``'s student, for 0.3-0.4 dB on the synthetic test split (benchmarks/RESULTS.md). Its
f(E), priors and guidance are ``tiny``'s (``train_deblur --preset tiny-rt --stage distill --start-from
tiny``, 4 minutes on two cores); its checkpoint ships in ``nodes/deblur/checkpoints/tiny-rt/``.
``base``: wider networks, longer schedules and more teacher steps for a GPU (configuration only; not
trained in this repository).

Guidance parameters (:class:`Guidance`, the s, λ, s', λ' of Algorithm 1). The sampler moves x̂_0 by
``-∇L_x`` and r̂_0 by ``-∇L_r`` in intensity units (see :mod:`.guidance`), so s and s' are step sizes:
``s = 1 / (2 F²)`` would make one step land exactly on y = F x + r. Why the defaults:

* ``s = 0.3``: with F ≈ 1 each step closes ~60% of the data-fidelity gap, so over the 8 steps x̂_0
  is pulled onto y = f(E) x + r while the prior still shapes every intermediate sample (s = 0.5
  would make each step the pseudo-inverse (y - r) / f(E), which inherits f(E)'s errors at edges).
* ``λ = 1e-4``: the smoothed-TV gradient is ±1 per difference wherever |d| > 1e-3, i.e. almost
  everywhere, so λ moves every pixel by up to 4λ per step. At the tiny data's error level (RMSE
  ≈ 0.006, 44 dB) that must stay well below 0.006 / 8 steps: λ = 0.002 cost 5 dB on val in the first
  tiny run (``train_log.json`` of that run: 38.9 dB with λ = 0.002, 44.3 dB with λ = 0).
* ``s' = 0.05``: r has a weaker step than x so the residual explains only what x cannot (with s' ≥ s
  r would absorb the whole mismatch and x would stop being guided).
* ``λ' = 2e-4``: the L1 prior keeps r sparse, as EBRD asks (r holds the motion the event threshold
  missed, zero elsewhere); the residual's standard deviation is ≈ 0.014 (1 / r_scale), so the
  per-step shrinkage stays a fraction of it.

``tools/train_deblur.py --stage tune`` scores a grid around these on validation crops and stores
the best in the checkpoint (the grid and its scores are in the checkpoint's ``train_log.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from evpipe.nodes.predict.presets import StageSchedule  # one schedule type for every trainer


@dataclass(frozen=True)
class Guidance:
    """Guidance weights of the alternating sampler: ``s``, ``lam`` (x step), ``s_r``, ``lam_r`` (r step)."""

    s: float = 0.3
    lam: float = 1e-4
    s_r: float = 0.05
    lam_r: float = 2e-4

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0.0:
                raise ValueError(f"Guidance.{name}: must be >= 0, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Preset:
    name: str
    image_size: int
    crop: int  # every network is fully convolutional; training uses random crops of this size
    edi_c: float  # contrast threshold for the raw E; f(E) learns the per-sensor correction
    edi_samples: int  # midpoint-rule samples of the EDI outer integral
    enhance_channels: int
    unet_channels: int
    unet_mult: tuple[int, ...]
    student_channels: int
    student_mult: tuple[int, ...]
    student_head: int  # channels of the student's full-resolution head (0: none)
    event_bins: int  # voxel bins of the exposure's events in the student's condition
    teacher_steps: int
    student_steps: tuple[int, ...]
    enhance: StageSchedule
    priors: StageSchedule
    distill: StageSchedule
    distill_pairs: int  # teacher samples (random training crops) the students learn from
    distill_weight: float  # weight of the teacher term beside the data term in the student's loss
    guidance: Guidance
    student_head_layers: int = 8  # 3x3 convolutions of the student's head
    student_e: str = "enhanced"  # the student's E channels: f(E) or the raw E (ModelConfig.student_e)


_TINY = Preset(
    name="tiny", image_size=128, crop=64, edi_c=0.3, edi_samples=32, enhance_channels=16,
    unet_channels=32, unet_mult=(1, 2), student_channels=64, student_mult=(1, 2), student_head=32, event_bins=4,
    teacher_steps=8, student_steps=(1,),
    enhance=StageSchedule(iters=200, batch=16, lr=2e-3),
    priors=StageSchedule(iters=500, batch=16, lr=1e-3),
    distill=StageSchedule(iters=4000, batch=16, lr=1e-3),
    distill_pairs=256, distill_weight=0.25, guidance=Guidance(),
)

PRESETS: dict[str, Preset] = {
    "tiny": _TINY,
    "tiny-rt": replace(_TINY, name="tiny-rt", student_channels=16, student_head=16, student_head_layers=5,
                       student_e="raw"),
    "base": Preset(
        name="base", image_size=256, crop=128, edi_c=0.3, edi_samples=32, enhance_channels=32,
        unet_channels=96, unet_mult=(1, 2, 3), student_channels=128, student_mult=(1, 2, 3), student_head=32,
        event_bins=5,
        teacher_steps=50, student_steps=(4,),
        enhance=StageSchedule(iters=20_000, batch=32, lr=5e-4),
        priors=StageSchedule(iters=200_000, batch=64, lr=2e-4),
        distill=StageSchedule(iters=20_000, batch=64, lr=1e-4),
        distill_pairs=50_000, distill_weight=0.25, guidance=Guidance(),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown deblur preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[name]
