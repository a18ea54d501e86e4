"""HiFI inference: the patch-based cascade with MultiDiffusion merging, and recursive ×2^k upsampling.

``interpolate(model, frame0, frame1, settings)`` predicts the middle frame of two frames:

1. Move both frames halfway along their global translation where it explains their difference
   (``alignment.align_to_middle`` with ``motion_shift``, our addition), pad them (reflect) so every
   pyramid level divides evenly, and build a ``levels``-level pyramid by ×2 area downsampling (level
   ``levels - 1`` is the coarsest).
2. At the coarsest level the estimate is zeros (availability 0): the model does base interpolation.
   At each finer level the estimate is the previous level's prediction upsampled ×2 (bilinear).
   The sampler works in the model's data units (the residual from the level's blend of the two
   frames, :meth:`HiFI.to_data`), the estimate is given in the same units.
3. At every level the image is covered by overlapping patches of the training size
   (``settings.patch``); each DDIM step denoises all patches (batched, ``patch_batch`` at a time) and
   merges their v predictions by averaging where they overlap (MultiDiffusion). With the
   deterministic DDIM step, averaging v is the same as averaging each patch's next state z_s: the
   step is linear in v and every patch sees the same z_t. Only the patch batch runs through the
   network, so its memory does not grow with the image.
4. ``settings.samples`` samples (different noise) are drawn one after another and averaged — the
   paper's "mean of 4 samples", without holding all four at full resolution.

``settings.patch = None`` runs the network on the whole level instead (the non-patched model: with
``levels = 1`` HiFI's base model at full resolution). Frames are float32 (C, H, W) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import Tensor

from evpipe.nodes import diffusion
from evpipe.nodes.colour import rgb_to_ycbcr, unit_image, ycbcr_to_rgb
from evpipe.nodes.model_engines import EngineChoice, NetworkEngines
from evpipe.nodes.upsample import DEFAULT_CHECKPOINT
from evpipe.nodes.upsample.alignment import align_to_middle, motion_shift
from evpipe.nodes.upsample.export import INPUT_NAMES, OUTPUT_NAME, cached_denoiser_onnx
from evpipe.nodes.upsample.model import HiFI, from_model, load_checkpoint, to_model
from evpipe.runtime.engines import BACKENDS, select_engine

Network = Callable[..., Tensor]  # (z_t, t, frame0, frame1, estimate, available) -> v, as HiFI.forward


@dataclass(frozen=True)
class CascadeSettings:
    """Inference settings. The defaults (3 levels, 1 DDIM step, 1 sample) are the shipped setting, chosen by
    measurement: on the 12 dropped frames of the three held-out `video_gallery` test clips at 640 px (with the
    ``tiny`` checkpoint) they scored 36.52 dB colour PSNR against 36.21 for the paper's sampler
    (:data:`PAPER_SAMPLER`: 8 steps, mean of 4 samples), above it on every clip, at 1/30 of its CPU time
    (benchmarks/upsample_videos_test_640.md).

    ``patch``: patch side in pixels (None: whole levels, no patches); ``overlap``: fraction of the
    patch side shared by neighbouring patches (0.25: 25 patches of 32 cover 128², 49 at 0.5 — the CPU
    budget's choice); ``patch_batch``: patches per network call (bounds
    memory); ``seed``: the noise of sample i is drawn from ``torch.Generator().manual_seed(seed + i)``.
    """

    levels: int = 3
    steps: int = 1
    samples: int = 1
    patch: int | None = 32
    overlap: float = 0.25
    patch_batch: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.levels < 1 or self.steps < 1 or self.samples < 1 or self.patch_batch < 1:
            raise ValueError(f"CascadeSettings: levels, steps, samples and patch_batch must be >= 1, got {self}")
        if self.patch is not None and self.patch < 1:
            raise ValueError(f"CascadeSettings: patch must be >= 1 or None, got {self.patch}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"CascadeSettings: overlap must be in [0, 1), got {self.overlap}")


# The HiFI paper's sampler (8 DDIM steps, the mean of 4 samples), for ``--steps 8 --samples 4``.
PAPER_SAMPLER = CascadeSettings(levels=3, steps=8, samples=4)


def patch_origins(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of patches of ``size`` covering [0, length) with at most ``stride`` between starts;
    the last patch ends exactly at ``length``. A length <= size gives one patch at 0."""
    if length <= size:
        return [0]
    origins = list(range(0, length - size, stride))
    return [*origins, length - size]


def patch_grid(height: int, width: int, size: int, overlap: float) -> list[tuple[int, int]]:
    """(y, x) origins of overlapping ``size``-patches covering a height × width image, row-major."""
    stride = max(1, round(size * (1.0 - overlap)))
    return [(y, x) for y in patch_origins(height, size, stride) for x in patch_origins(width, size, stride)]


def cut_patches(image: Tensor, origins: list[tuple[int, int]], size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (len(origins) * B, C, ph, pw), origin-major (all of the batch for origin 0 first)."""
    ph, pw = size
    return torch.cat([image[..., y:y + ph, x:x + pw] for y, x in origins])


def merge_patches(patches: Tensor, origins: list[tuple[int, int]], shape: tuple[int, ...],
                  total: Tensor | None = None) -> Tensor:
    """Sum of ``patches`` (origin-major, as from :func:`cut_patches`) placed at ``origins`` into an image of
    ``shape`` (B, C, H, W) — added onto ``total`` when given. Divide by :func:`coverage` to average."""
    if total is None:
        total = torch.zeros(shape, dtype=patches.dtype, device=patches.device)
    batch, ph, pw = shape[0], patches.shape[-2], patches.shape[-1]
    for i, (y, x) in enumerate(origins):
        total[..., y:y + ph, x:x + pw] += patches[i * batch:(i + 1) * batch]
    return total


def coverage(height: int, width: int, origins: list[tuple[int, int]], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """How many patches of a :func:`patch_grid` cover each row, (1, 1, H, 1), and each column, (1, 1, 1, W),
    float32; a pixel's count is their product (the grid is every row origin with every column origin).
    Two vectors rather than an image: at 2048² a full-size count would be one more 16 MiB buffer."""
    ys, xs = sorted({y for y, _ in origins}), sorted({x for _, x in origins})
    if len(ys) * len(xs) != len(origins):
        raise ValueError("coverage: origins must be a grid (every row origin with every column origin)")
    rows, cols = torch.zeros(1, 1, height, 1), torch.zeros(1, 1, 1, width)
    for y in ys:
        rows[..., y:y + size[0], :] += 1.0
    for x in xs:
        cols[..., x:x + size[1]] += 1.0
    return rows, cols


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def multidiffusion_denoiser(model: HiFI, frame0: Tensor, frame1: Tensor, estimate: Tensor, available: bool,
                            patch: int | None, overlap: float, patch_batch: int,
                            network: Network | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """A whole-image v predictor ``fn(z_t (1, C, H, W), t (1,)) -> v`` for ``evpipe.nodes.diffusion``'s
    sampler: the network's v on overlapping patches, averaged where they overlap. Conditions are
    (1, C, H, W): frames in the model range, ``estimate`` in data units; ``patch`` None evaluates the
    whole image in one call. ``network`` evaluates the denoiser (the node and CLI pass their engine,
    :class:`evpipe.nodes.model_engines.NetworkEngines`; default ``model`` itself, eagerly)."""
    height, width = z_shape = frame0.shape[-2:]
    if patch is None:
        size, origins = (height, width), [(0, 0)]
    else:
        size = (min(patch, height), min(patch, width))
        origins = patch_grid(height, width, patch, overlap)
    rows, cols = coverage(height, width, origins, size)
    rows, cols = rows.to(frame0.device), cols.to(frame0.device)
    flag = torch.full((1,), float(available), device=frame0.device)
    call = network or model
    chunks = list(_chunks(origins, patch_batch))
    cond_patches = [(cut_patches(frame0, c, size), cut_patches(frame1, c, size), cut_patches(estimate, c, size))
                    for c in chunks] if len(chunks) == 1 else None  # one chunk: cut the conditions once

    def denoise(z_t: Tensor, t: Tensor) -> Tensor:
        total = torch.zeros(z_t.shape[0], z_t.shape[1], *z_shape, device=z_t.device)
        for j, chunk in enumerate(chunks):
            f0, f1, est = cond_patches[j] if cond_patches else (
                cut_patches(frame0, chunk, size), cut_patches(frame1, chunk, size), cut_patches(estimate, chunk, size))
            n = len(chunk)
            v = call(cut_patches(z_t, chunk, size), t.expand(n), f0, f1, est, flag.expand(n))
            merge_patches(v, chunk, total.shape, total)
        return total.div_(rows).div_(cols)

    return denoise


def _pad_multiple(levels: int, model: HiFI) -> int:
    return 2 ** (levels - 1) * model.multiple


@torch.no_grad()
def interpolate(model: HiFI, frame0: Tensor, frame1: Tensor, settings: CascadeSettings | None = None,
                network: Network | None = None, shift: tuple[float, float] | None = None) -> Tensor:
    """The middle frame of ``frame0`` and ``frame1`` (float32 (C, H, W) in [0, 1]) -> (C, H, W) in [0, 1];
    ``network`` as in :func:`multidiffusion_denoiser`; ``shift`` the pair's translation (default their
    :func:`~evpipe.nodes.upsample.alignment.motion_shift`)."""
    settings = settings or CascadeSettings()
    if frame0.shape != frame1.shape or frame0.ndim != 3:
        raise ValueError(f"interpolate: frames must be (C, H, W) of the same shape, got {tuple(frame0.shape)} "
                         f"and {tuple(frame1.shape)}")
    if frame0.shape[0] != model.config.channels:
        raise ValueError(f"interpolate: the model takes {model.config.channels}-channel frames, got "
                         f"{frame0.shape[0]}")
    height, width = frame0.shape[-2:]
    multiple = _pad_multiple(settings.levels, model)
    pad_h, pad_w = -height % multiple, -width % multiple
    # Filled in place rather than stacked: at 2048² each full-size copy is 16 MiB per channel.
    pair = frame0.new_empty((2, *frame0.shape), dtype=torch.float32)
    pair[0], pair[1] = align_to_middle(frame0.float(), frame1.float(), shift)
    pair = to_model(pair)
    if pad_h or pad_w:
        # Reflect needs the pad to be smaller than the side; replicate covers tiny frames.
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        pair = F.pad(pair, (0, pad_w, 0, pad_h), mode=mode)
    pyramid = [pair]
    for _ in range(settings.levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    estimate: Tensor | None = None
    for level in reversed(range(settings.levels)):
        f0, f1 = pyramid[level][0:1], pyramid[level][1:2]
        if estimate is None:
            cond, available = torch.zeros_like(f0), False
        else:
            cond = model.to_data(F.interpolate(estimate, size=f0.shape[-2:], mode="bilinear", align_corners=False),
                                 f0, f1)
            available, estimate = True, None  # the coarser estimate is not needed past its upsampled copy
        denoise = multidiffusion_denoiser(model, f0, f1, cond, available, settings.patch, settings.overlap,
                                          settings.patch_batch, network)
        mean = torch.zeros_like(f0)
        for i in range(settings.samples):
            generator = torch.Generator().manual_seed(settings.seed + i)
            mean += diffusion.ddim_sample(denoise, torch.randn(f0.shape, generator=generator).to(f0.device),
                                          model.schedule,
                                          settings.steps, prediction="v")
        del denoise, cond  # their full-size buffers before the next ones are made
        estimate = model.from_data(mean.div_(settings.samples), f0, f1).clamp_(-1.0, 1.0)
        del mean
    return from_model(estimate)[0, :, :height, :width]


def recursive_middles(frame0: Tensor, frame1: Tensor, factor: int,
                      middle: Callable[[Tensor, Tensor], Tensor]) -> list[Tensor]:
    """The ``factor - 1`` frames at times k / factor (k = 1 .. factor-1) between ``frame0`` (time 0) and
    ``frame1`` (time 1), in time order, by recursive bisection with ``middle(a, b)``. ``factor`` must be
    a power of two (×2, ×4, ×8, ...)."""
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"upsampling factor must be a power of two (2, 4, 8, ...), got {factor}")
    if factor == 1:
        return []
    mid = middle(frame0, frame1)
    half = factor // 2
    return [*recursive_middles(frame0, mid, half, middle), mid, *recursive_middles(mid, frame1, half, middle)]


class Upsampler:
    """Numpy front end for the node, the CLI and the evaluation: images float32 (H, W) gray or (H, W, 3)
    colour in [0, 1] (uint8 is scaled by 1/255); ``checkpoint`` a shipped name or a file.

    A colour model takes colour frames as they are. A gray model (the shipped ``tiny``) takes gray frames
    as they are and returns gray; colour frames run the network on their luma (:mod:`evpipe.nodes.colour`)
    and carry their chroma by the aligned blend the cascade starts from: both frames' Cb/Cr moved halfway
    along the luma's ``motion_shift`` and averaged — measured against the plain blend's chroma in
    ``benchmarks/RESULTS.md`` ("Colour"). A colour pair comes back (H, W, 3) RGB.

    The denoiser runs through the engine interface on ``backend`` / ``device`` / ``precision``
    (:func:`evpipe.runtime.engines.select_engine`); ``auto`` is torch here (eager on the CPU, a CUDA
    graph per patch-batch shape on a GPU): the cascade calls the network with a different batch and
    size per level, and onnxruntime / tensorrt (the cached ONNX export) are used when asked for."""

    def __init__(self, checkpoint: str | Path = DEFAULT_CHECKPOINT, settings: CascadeSettings | None = None,
                 device: str = "cpu", backend: str = "torch", precision: str = "fp32") -> None:
        forms = ("torch",) if backend == "auto" else BACKENDS
        self.choice = EngineChoice(*select_engine(backend, device, precision, forms), precision)
        self.device = self.choice.device
        self.model = load_checkpoint(checkpoint, self.device)
        self.settings = settings or CascadeSettings()

        self.network = NetworkEngines(self.choice, self.model, INPUT_NAMES, OUTPUT_NAME,
                                      onnx=lambda: cached_denoiser_onnx(checkpoint))

    def _luma_chroma(self, image: np.ndarray) -> bool:
        """Whether ``image`` runs as luma plus carried chroma (a colour image, a gray model)."""
        return self.model.config.channels == 1 and image.ndim == 3

    def _tensor(self, image: np.ndarray) -> Tensor:
        """(C, H, W) on the device: the model's channels, or Y, Cb, Cr for :meth:`_luma_chroma` images."""
        image = unit_image(image)
        channels = self.model.config.channels
        if self._luma_chroma(image):
            image = rgb_to_ycbcr(image)
        elif image.ndim == 2 and channels == 3:
            raise ValueError(f"image of shape {image.shape} is gray; the {channels}-channel model takes (H, W, 3)")
        if image.ndim == 2:
            return torch.from_numpy(image)[None].to(self.device)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 2, 0))).to(self.device)

    def _image(self, tensor: Tensor, colour: bool) -> np.ndarray:
        array = tensor.cpu().numpy()
        if array.shape[0] == 1:
            return array[0]
        array = np.ascontiguousarray(np.moveaxis(array, 0, 2))
        return ycbcr_to_rgb(array) if colour and self.model.config.channels == 1 else array

    def _middle(self, frame0: Tensor, frame1: Tensor) -> Tensor:
        if frame0.shape[0] == self.model.config.channels:
            return interpolate(self.model, frame0, frame1, self.settings, self.network)
        shift = motion_shift(frame0[:1], frame1[:1])
        luma = interpolate(self.model, frame0[:1], frame1[:1], self.settings, self.network, shift)
        chroma0, chroma1 = align_to_middle(frame0[1:], frame1[1:], shift)
        return torch.cat([luma, chroma0.add_(chroma1).mul_(0.5)])

    def middle(self, image0: np.ndarray, image1: np.ndarray) -> np.ndarray:
        """The frame halfway between two images (see the class docstring for the image format)."""
        colour = self._luma_chroma(np.asarray(image0))
        return self._image(self._middle(self._tensor(image0), self._tensor(image1)), colour)

    def between(self, image0: np.ndarray, image1: np.ndarray, factor: int) -> list[np.ndarray]:
        """The ``factor - 1`` frames at k / factor between the images (``factor`` a power of two)."""
        colour = self._luma_chroma(np.asarray(image0))
        middles = recursive_middles(self._tensor(image0), self._tensor(image1), factor, self._middle)
        return [self._image(frame, colour) for frame in middles]

    def close(self) -> None:
        self.network.close()
