"""Forward operators A of video degradations, their adjoints Aᵀ, and the solvers built on them.

A clip is a float32 tensor (L, C, H, W): L frames, C channels, in [0, 1] (any range works: every
operator is linear). Measurements have the shape :meth:`LinearOperator.measurement_shape` gives.

Operators (the DDS paper's degradations, applied temporal first, then spatial):

* :class:`TemporalPSF` — ``y[t] = sum_j psf[j] * x[edge(t + j - w // 2)]``, ``edge`` wrapping around the
  clip (``circular``, the boundary of the paper's released code, the default) or repeating its end
  frames (``replicate``): exactly ``evpipe.nodes.restore.psf.degrade_clip``. Built as an (L, L) matrix,
  so the adjoint is its transpose. The boundary decides what is recoverable: a width-13 uniform PSF on
  16 frames is invertible when circular (13 and 16 are coprime) but has a null vector when
  replicated (frames 1 and 14 against the rest), which no per-frame prior can pin down.
* :class:`GaussianBlur` — per frame, σ = 2 px, 13 taps, zero padding ('same' size), as two 1-D passes
  (the Gaussian is separable); self-adjoint: the kernel is symmetric and the padding zero.
* :class:`AveragePool` — 4 × 4 mean; adjoint spreads each value / 16 over its block.
* :class:`Inpaint` — multiply by a 0/1 mask (L, 1, H, W) (self-adjoint); :func:`random_mask` draws
  one keeping a fraction of the pixels, independently per frame.
* :class:`Compose` — ``Compose([A1, A2])(x) = A2(A1(x))``, adjoint ``A1ᵀ(A2ᵀ(y))``.

Solvers: :func:`conjugate_gradient` (a few steps of CG on ``(AᵀA + γI) x = Aᵀy + γ x̂``, started at
``x̂``: the Krylov-subspace update of DDS, and the CG-only baseline) and :func:`admm_tv` (ADMM on
``½‖y − Ax‖² + λ‖∇_t x‖₁``, temporal total variation, its x-step solved by CG).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import Tensor

from evpipe.nodes.restore.psf import DEFAULT_BOUNDARY, boundary_index

Shape = tuple[int, int, int, int]


class LinearOperator(ABC):
    """A linear map on clips (L, C, H, W) with its exact adjoint."""

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """A x."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """Aᵀ y."""

    def measurement_shape(self, shape: Shape) -> Shape:
        """Shape of A x for a clip of ``shape`` (same by default)."""
        return shape

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)


class TemporalPSF(LinearOperator):
    """Convolution along time with ``psf`` (w,) for clips of ``length`` frames, frames beyond the clip
    given by ``boundary`` (:mod:`evpipe.nodes.restore.psf`)."""

    def __init__(self, psf: np.ndarray | Sequence[float], length: int, boundary: str = DEFAULT_BOUNDARY) -> None:
        psf = np.asarray(psf, dtype=np.float64)
        if psf.ndim != 1 or len(psf) == 0 or length < 1:
            raise ValueError(f"TemporalPSF: need a 1-D psf and length >= 1, got shape {psf.shape}, {length=}")
        half = len(psf) // 2
        matrix = np.zeros((length, length))
        for j, weight in enumerate(psf):
            np.add.at(matrix, (np.arange(length), boundary_index(np.arange(length) + j - half, length, boundary)),
                      weight)
        self.matrix = torch.from_numpy(matrix).float()
        self.length = length

    def _check(self, x: Tensor) -> None:
        if x.shape[0] != self.length:
            raise ValueError(f"TemporalPSF built for {self.length} frames got a clip of {x.shape[0]}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return (self.matrix.to(x) @ x.reshape(self.length, -1)).reshape(x.shape)

    def adjoint(self, y: Tensor) -> Tensor:
        self._check(y)
        return (self.matrix.to(y).T @ y.reshape(self.length, -1)).reshape(y.shape)


def gaussian_taps(sigma: float, size: int) -> Tensor:
    """float32 (size,) normalised 1-D Gaussian; the 2-D kernel is their outer product."""
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (axis / sigma) ** 2)
    return (taps / taps.sum()).float()


class GaussianBlur(LinearOperator):
    """Per-frame Gaussian blur (σ px, ``size`` taps, odd), zero padding, output the input's size.

    Applied as a vertical then a horizontal 1-D pass: 2·size multiplications per pixel instead of
    size², and the operator is self-adjoint (symmetric kernel, zero padding), so the adjoint is the same
    two passes — torch's grouped transposed 2-D convolution took 290 ms per 16-frame 128² clip on this
    CPU against 4 ms for the two passes, and CG applies both at every iteration."""

    def __init__(self, sigma: float = 2.0, size: int = 13) -> None:
        if sigma <= 0 or size < 1 or size % 2 == 0:
            raise ValueError(f"GaussianBlur: need sigma > 0 and an odd size, got {sigma=}, {size=}")
        self.taps = gaussian_taps(sigma, size)
        self.pad = size // 2

    def forward(self, x: Tensor) -> Tensor:
        taps, channels = self.taps.to(x), x.shape[1]
        vertical = F.conv2d(x, taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), padding=(self.pad, 0),
                            groups=channels)
        return F.conv2d(vertical, taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), padding=(0, self.pad),
                        groups=channels)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.forward(y)


class AveragePool(LinearOperator):
    """``factor`` × ``factor`` block means; H and W must be multiples of ``factor``."""

    def __init__(self, factor: int = 4) -> None:
        if factor < 1:
            raise ValueError(f"AveragePool: factor must be >= 1, got {factor}")
        self.factor = factor

    def measurement_shape(self, shape: Shape) -> Shape:
        length, channels, height, width = shape
        if height % self.factor or width % self.factor:
            raise ValueError(f"AveragePool({self.factor}): frame size {height}x{width} is not a multiple of it")
        return length, channels, height // self.factor, width // self.factor

    def forward(self, x: Tensor) -> Tensor:
        self.measurement_shape(tuple(x.shape))
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        spread = y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)
        return spread / self.factor**2


class Inpaint(LinearOperator):
    """Multiplication by a 0/1 ``mask`` broadcasting against the clip, e.g. (L, 1, H, W)."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask.float()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.mask.to(x)

    adjoint = forward


def random_mask(shape: Shape, keep: float = 0.5, seed: int = 0) -> Tensor:
    """float32 0/1 mask (L, 1, H, W) keeping each pixel of each frame with probability ``keep``."""
    length, _, height, width = shape
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand((length, 1, height, width), generator=generator) < keep).float()


class Compose(LinearOperator):
    """Apply ``operators`` in order (the first is applied first)."""

    def __init__(self, operators: Sequence[LinearOperator]) -> None:
        if not operators:
            raise ValueError("Compose: no operators")
        self.operators = list(operators)

    def measurement_shape(self, shape: Shape) -> Shape:
        for op in self.operators:
            shape = op.measurement_shape(shape)
        return shape

    def forward(self, x: Tensor) -> Tensor:
        for op in self.operators:
            x = op.forward(x)
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        for op in reversed(self.operators):
            y = op.adjoint(y)
        return y


SPATIAL = ("blur", "sr4", "inpaint")


def spatial_operator(kind: str, shape: Shape, seed: int = 0) -> LinearOperator:
    """The paper's spatial degradation ``kind`` for clips of ``shape`` (L, C, H, W): ``blur``
    (Gaussian σ 2, 13 taps), ``sr4`` (4× average pooling) or ``inpaint`` (a random mask keeping 50% of
    each frame's pixels, drawn from ``seed``)."""
    if kind == "blur":
        return GaussianBlur(2.0, 13)
    if kind == "sr4":
        return AveragePool(4)
    if kind == "inpaint":
        return Inpaint(random_mask(shape, 0.5, seed))
    raise ValueError(f"spatial degradation {kind!r}: expected one of {SPATIAL} or none")


def make_operator(psf: np.ndarray | Sequence[float], shape: Shape, spatial: str | None = None,
                  seed: int = 0, boundary: str = DEFAULT_BOUNDARY) -> LinearOperator:
    """The temporal PSF (``boundary`` edges) on clips of ``shape`` (L, C, H, W), then optionally
    :func:`spatial_operator`."""
    temporal = TemporalPSF(psf, shape[0], boundary)
    if spatial is None:
        return temporal
    return Compose([temporal, spatial_operator(spatial, shape, seed)])


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(a.reshape(-1), b.reshape(-1))


def conjugate_gradient(normal: Callable[[Tensor], Tensor], rhs: Tensor, x: Tensor, iterations: int,
                       tolerance: float | None = None) -> Tensor:
    """``iterations`` steps of CG on ``normal(x) = rhs`` (``normal`` symmetric positive semi-definite)
    started at ``x``; stops early once the residual norm is below ``tolerance`` × ‖rhs‖ (default
    100 × the dtype's machine epsilon). Every iterate stays in x + the Krylov subspace of the initial
    residual. Returns a new tensor like ``x``."""
    # Stopping at rounding level matters for singular systems (a temporal PSF wider than the clip):
    # past it the search direction is rounding noise in the null space and the step size explodes.
    tolerance = 100 * torch.finfo(x.dtype).eps if tolerance is None else tolerance
    r = rhs - normal(x)
    p = r.clone()
    rr = _dot(r, r)
    stop = (tolerance * math.sqrt(float(_dot(rhs, rhs)))) ** 2
    for _ in range(iterations):
        if float(rr) <= stop or float(rr) == 0.0:
            break
        q = normal(p)
        pq = _dot(p, q)
        if float(pq) <= 0.0:  # direction in the null space of a semi-definite system: nothing left to gain
            break
        step = (rr / pq).to(x.dtype)
        x = x + step * p
        r = r - step * q
        rr_new = _dot(r, r)
        p = r + (rr_new / rr).to(x.dtype) * p
        rr = rr_new
    return x


def data_consistency(op: LinearOperator, y: Tensor, x_hat: Tensor, iterations: int, gamma: float = 0.0) -> Tensor:
    """M CG steps on ‖y − A x‖² + γ‖x − x̂‖², started at x̂ (DDS's update of the denoised clip)."""
    def normal(v: Tensor) -> Tensor:
        return op.adjoint(op.forward(v)) + gamma * v

    return conjugate_gradient(normal, op.adjoint(y) + gamma * x_hat, x_hat, iterations)


def temporal_difference(x: Tensor) -> Tensor:
    """∇_t x: (L - 1, ...) forward differences along time."""
    return x[1:] - x[:-1]


def temporal_difference_adjoint(d: Tensor) -> Tensor:
    """∇_tᵀ d for d (L - 1, ...) -> (L, ...)."""
    out = torch.zeros((d.shape[0] + 1, *d.shape[1:]), dtype=d.dtype, device=d.device)
    out[1:] += d
    out[:-1] -= d
    return out


def admm_tv(op: LinearOperator, y: Tensor, x: Tensor, lam: float, rho: float = 1.0, outer: int = 30,
            inner: int = 20) -> Tensor:
    """ADMM on ½‖y − A x‖² + λ‖∇_t x‖₁ from ``x`` (the paper's protocol: 30 outer iterations, 20 CG
    steps for each x-update; z = ∇_t x split, scaled dual u)."""
    z = temporal_difference(x)
    u = torch.zeros_like(z)
    aty = op.adjoint(y)

    def normal(v: Tensor) -> Tensor:
        return op.adjoint(op.forward(v)) + rho * temporal_difference_adjoint(temporal_difference(v))

    for _ in range(outer):
        x = conjugate_gradient(normal, aty + rho * temporal_difference_adjoint(z - u), x, inner)
        dx = temporal_difference(x)
        v = dx + u
        z = torch.sign(v) * (v.abs() - lam / rho).clamp(min=0.0)
        u = u + dx - z
    return x
