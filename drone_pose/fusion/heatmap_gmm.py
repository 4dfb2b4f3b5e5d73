"""Heatmaps compressed to mixtures of spherical Gaussians by weighted EM (MetaPose, Sec. 3.1 and
supplementary 8.2 and 8.6).

MetaPose's multi-view refiners take, instead of each keypoint heatmap, an M-component mixture of
spherical 2D Gaussians fitted to it: the grid's pixel centres are samples weighted by the heatmap
(weighted EM after Frisch & Hanebeck: the usual E-step, then an M-step whose sums carry each
sample's weight).

Conventions (as drone_pose.nets.heatmap_codec):
- Coordinates are heatmap pixels (x, y), the centre of pixel (row i, column j) at (x = j, y = i).
  `HeatmapGMM.to_image(stride)` maps to image pixels, u = stride (x + 0.5) - 0.5.
- Variances are per axis, px²: component m is N(mean_m, variance_m I). (The paper's 8.2 writes
  the sum of squared distances over the mass, which is the variance of both axes together; this
  is half that, the maximum-likelihood spherical variance, as MetaPose's code computes it.)
- Sample weights: the heatmap clamped at 0, values below `relative_threshold` x its peak set to
  0, normalised to sum 1.
- Variance floor: 1/12 px² by default, the variance of a position known only to the nearest pixel
  (uniform over one pixel). A heatmap with all its mass in one pixel fits to that floor. A floor
  (max), not an added term (MetaPose's code adds (0.5 px)² at every step), so a one-component fit
  is exactly the heatmap's weighted mean and isotropic variance wherever that exceeds the floor.
- Initialisation (deterministic): the means at the M highest local maxima (3x3) of the heatmap,
  where a heatmap's mass gathers; where it has fewer than M, the rest start 1 px around the
  highest (distinct starts: identical components would stay identical). Equal weights, variances
  of 1 px² (at least the floor): the first E-step is then nearly a hard split of the grid between
  the maxima. MetaPose's code spreads the means along the heatmap's first principal axis instead,
  which misses modes off that line (a flip-confused keypoint's second peak, three peaks).
- Invalid heatmaps (no positive mass, a non-finite value, or a sum that overflows): every
  component is the uniform grid's moments (weight 1/M, mean at the grid centre, the grid's
  per-axis variance); `valid` is False. Nothing returned is NaN.

The E-step never forms an [N,M,H,W] tensor: a spherical Gaussian on a grid factorises into a row
factor and a column factor, so the mixture density is an [H,M] @ [M,W] product and the M-step's
weighted sums are [H,W] @ [W,3M] and [3M,H] @ [H,3M] products. Each factor is taken relative to
the largest component's along its row or column and bounded below at e^-30 of it (float32;
e^-300 in float64), so that no float underflows: a subnormal float makes a CPU op ten times
slower, and a zero density would divide by zero. Where every component's factor is inside that
range this is textbook weighted EM (tested); a pixel that is more than about 7.7 std (float32)
from one component along an axis on which another is near gets a raised share of that component.
Only far background pixels are affected; against textbook EM the fits are as good (docs/metapose.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_ITERATIONS = 10
QUANTISATION_VARIANCE = 1.0 / 12.0  # px², variance of a uniform position within one pixel
INITIAL_VARIANCE = 1.0  # px²
SERIAL_MAX_PIXELS = 1 << 20  # CPU fits of at most this many heatmap pixels run on one thread


@dataclass(frozen=True)
class HeatmapGMM:
    """Mixtures of M spherical Gaussians, one per heatmap of a batch [...].

    weights [...,M] (sum 1), means [...,M,2] (x, y) and variances [...,M] (per axis, units²) in
    the pixels of the grid they were fitted on (heatmap px; image px after `to_image`); valid [...]
    bool, False where the heatmap was unusable (then a broad stand-in, see the module docstring).
    """

    weights: Tensor
    means: Tensor
    variances: Tensor
    valid: Tensor

    @property
    def components(self) -> int:
        """M, the number of mixture components."""
        return self.weights.shape[-1]

    def to_image(self, stride: float) -> HeatmapGMM:
        """The same mixtures in image pixels for heatmaps at 1/stride resolution (pixel centres at
        integers in both grids: u = stride (x + 0.5) - 0.5, variances x stride²). A stride that
        differs per axis would make the components elliptic: use `covariance(stride)` instead."""
        stride = float(stride)
        return HeatmapGMM(
            self.weights, stride * (self.means + 0.5) - 0.5, self.variances * stride**2, self.valid
        )

    def mean(self, stride: float | Tensor | None = None) -> Tensor:
        """Mixture means [...,2]: heatmap px, or image px with stride (a number or per axis [2] (x, y))."""
        mean = (self.weights.unsqueeze(-1) * self.means).sum(-2)
        return mean if stride is None else stride * (mean + 0.5) - 0.5

    def covariance(self, stride: float | Tensor | None = None) -> Tensor:
        """Mixture covariances [...,2,2] by moments, sum_m w_m (variance_m I + d_m d_m^T) with
        d_m = mean_m - mixture mean: heatmap px², or image px² with stride (a number or per axis
        [2] (x, y), then diag(stride) C diag(stride)). A keypoint's position uncertainty, e.g. as PnP
        weights (its inverse square root whitens the keypoint's residual)."""
        offsets = self.means - self.mean().unsqueeze(-2)  # [...,M,2]
        spread = (self.weights[..., None, None] * offsets.unsqueeze(-1) * offsets.unsqueeze(-2)).sum(-3)
        isotropic = (self.weights * self.variances).sum(-1)
        covariance = spread + isotropic[..., None, None] * torch.eye(
            2, dtype=spread.dtype, device=spread.device
        )
        if stride is None:
            return covariance
        scale = torch.as_tensor(stride, dtype=covariance.dtype, device=covariance.device).expand(2)
        return covariance * scale[:, None] * scale[None, :]


def gmm_log_likelihood(gmm: HeatmapGMM, points: Tensor) -> Tensor:
    """Log densities [...] (of 1/units²) of points [...,2] under the mixtures (batch shapes broadcast).

    MetaPose's stable form (supplementary 8.6): log-sum-exp over m of
    log(w_m / (2 pi variance_m)) - |x - mean_m|² / (2 variance_m), finite wherever the naive sum of
    densities underflows (far from every component). Weights are clamped at the smallest normal
    float (the paper's epsilon), so a component of weight 0 gives no -inf. Differentiable w.r.t.
    the points and the mixture (MetaPose's refiners minimise the negative log-likelihood of the
    projected keypoints).
    """
    squared = ((points.unsqueeze(-2) - gmm.means) ** 2).sum(-1)  # [...,M]
    tiny = torch.finfo(gmm.weights.dtype).tiny
    logits = (
        torch.log(gmm.weights.clamp_min(tiny))
        - torch.log(2.0 * math.pi * gmm.variances)
        - squared / (2.0 * gmm.variances)
    )
    return torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def fit_heatmap_gmm(
    heatmaps: Tensor,
    components: int,
    iterations: int = DEFAULT_ITERATIONS,
    variance_floor: float = QUANTISATION_VARIANCE,
    relative_threshold: float = 0.0,
) -> HeatmapGMM:
    """Fit an M-component spherical Gaussian mixture to every heatmap [...,H,W] by weighted EM.

    components: M >= 1. iterations: EM steps after the initialisation (10: docs/metapose.md has
    how far they stop from convergence; one step makes an M = 1 fit exact, so M = 1 runs at most
    two). variance_floor: px², > 0. relative_threshold: heatmap values below this fraction of
    their heatmap's peak count as 0 (0 keeps the whole heatmap, as MetaPose does; a network's low
    background then makes broad components of its own).
    Returns heatmap px on the heatmaps' device, float64 for float64 heatmaps, else float32. All
    heatmaps are fitted at once (no Python loop over them). Not differentiated (MetaPose stops
    gradients at the refiner's inputs).
    """
    _check_arguments(heatmaps, components, iterations, variance_floor, relative_threshold)
    batch_shape, (height, width) = heatmaps.shape[:-2], heatmaps.shape[-2:]
    dtype = torch.float64 if heatmaps.dtype == torch.float64 else torch.float32
    with _serial_when_small(heatmaps):
        flat = heatmaps.reshape(-1, height, width).to(dtype)  # a copy for channels_last network output
        samples, valid = _sample_weights(flat, relative_threshold)
        weights, means, variances = _initial_mixture(samples, components, variance_floor)
        grid = _Grid.of(height, width, dtype, flat.device)
        steps = iterations if components > 1 else min(iterations, 2)
        for _ in range(steps):
            weights, means, variances = _em_step(samples, grid, weights, means, variances, variance_floor)
        weights, means, variances = _stand_in_where_invalid(
            valid, weights, means, variances, height, width, variance_floor
        )
    return HeatmapGMM(
        weights.reshape(*batch_shape, components),
        means.reshape(*batch_shape, components, 2),
        variances.reshape(*batch_shape, components),
        valid.reshape(batch_shape),
    )


def _check_arguments(
    heatmaps: Tensor, components: int, iterations: int, variance_floor: float, relative_threshold: float
) -> None:
    """ValueError naming the first bad argument of fit_heatmap_gmm."""
    if heatmaps.ndim < 2 or heatmaps.shape[-1] < 1 or heatmaps.shape[-2] < 1:
        raise ValueError(f"heatmaps must have shape [..., H, W], got {list(heatmaps.shape)}")
    if not heatmaps.is_floating_point():
        raise ValueError(f"heatmaps must be floating point, got {heatmaps.dtype}")
    if not 1 <= components <= heatmaps.shape[-1] * heatmaps.shape[-2]:
        raise ValueError(f"components must be between 1 and H*W, got {components}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not variance_floor > 0.0 or not math.isfinite(variance_floor):
        raise ValueError(f"variance_floor must be a positive number of px², got {variance_floor}")
    if not 0.0 <= relative_threshold < 1.0:
        raise ValueError(f"relative_threshold must be in [0, 1), got {relative_threshold}")


@contextmanager
def _serial_when_small(heatmaps: Tensor) -> Iterator[None]:
    """Run a small CPU fit on the calling thread alone (as drone_pose.pnp.solver.serial_when_small:
    split over intra-op threads, small ops wait for descheduled threads on a busy machine)."""
    threads = torch.get_num_threads()
    if heatmaps.device.type != "cpu" or threads == 1 or heatmaps.numel() > SERIAL_MAX_PIXELS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sample_weights(heatmaps: Tensor, relative_threshold: float) -> tuple[Tensor, Tensor]:
    """Sample weights [N,H,W] (sum 1, or all 0) of heatmaps [N,H,W] and which heatmaps are valid [N].

    Non-finite values count as 0 here, so the EM stays finite; such heatmaps are invalid and their
    result is replaced later. Values below sqrt(smallest normal float) x the peak are also set to
    0: with them no product in the EM step becomes a subnormal float. (Arithmetic, not boolean
    masks: comparisons and torch.where cost several times an add on a CPU.)
    """
    finite = torch.isfinite(heatmaps.sum((-2, -1)))  # NaN or inf anywhere (or an overflowing sum)
    values = F.threshold(torch.nan_to_num(heatmaps, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 0.0)
    peak = values.amax((-2, -1), keepdim=True)
    cut = max(relative_threshold, math.sqrt(torch.finfo(values.dtype).tiny))
    relative = F.threshold(values / peak.clamp_min(torch.finfo(peak.dtype).tiny), cut, 0.0)
    mass = relative.sum((-2, -1), keepdim=True)
    valid = finite & (peak.flatten() > 0.0)
    return relative / mass.clamp_min(torch.finfo(mass.dtype).tiny), valid


def _local_maxima(samples: Tensor) -> Tensor:
    """Values [N,H,W] of the pixels that are maxima of their 3x3 neighbourhood, else -1 (positive
    maxima are > 0). Shifted-slice maxima: max_pool2d is ten times slower on small CPU batches."""
    padded = F.pad(samples, (1, 1, 1, 1), value=-1.0)
    rows = torch.maximum(torch.maximum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])  # [N,H,W+2]
    pooled = torch.maximum(torch.maximum(rows[..., :-2], rows[..., 1:-1]), rows[..., 2:])
    is_maximum = (samples - pooled).sign_().add_(1.0)  # samples <= pooled: 1 where equal, else 0
    return torch.addcmul(is_maximum - 1.0, is_maximum, samples)


def _initial_mixture(
    samples: Tensor, components: int, variance_floor: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights [N,M], means [N,M,2] and variances [N,M] to start EM from (module docstring)."""
    width = samples.shape[-1]
    score, index = _local_maxima(samples).flatten(1).topk(components, dim=-1)  # highest first
    maxima = torch.stack((index % width, index // width), dim=-1).to(samples.dtype)  # [N,M,2]
    slot = torch.arange(components, dtype=samples.dtype, device=samples.device)
    angle = 2.0 * math.pi * (slot - 1.0) / max(components - 1, 1)  # slots 1..M-1 evenly around
    around = torch.stack((torch.cos(angle), torch.sin(angle)), dim=-1)  # [M,2], 1 px from the best
    means = torch.where((score > 0.0).unsqueeze(-1), maxima, maxima[:, :1] + around)
    weights = torch.full_like(score, 1.0 / components)
    variances = torch.full_like(score, max(INITIAL_VARIANCE, variance_floor))
    return weights, means, variances


@dataclass(frozen=True)
class _Grid:
    """The pixel centres of an [H,W] grid as one coordinate vector [W+H]: the W column x's, then the
    H row y's. pick [2,W+H]: means [...,2] @ pick gives each coordinate's mean coordinate (x for
    the columns, y for the rows); is_row [W+H]: 1 for the rows."""

    coordinates: Tensor
    pick: Tensor
    is_row: Tensor
    width: int

    @staticmethod
    def of(height: int, width: int, dtype: torch.dtype, device: torch.device) -> _Grid:
        """The grid of [H,W] heatmaps."""
        x = torch.arange(width, dtype=dtype, device=device)
        y = torch.arange(height, dtype=dtype, device=device)
        is_row = torch.cat((torch.zeros_like(x), torch.ones_like(y)))
        return _Grid(torch.cat((x, y)), torch.stack((1.0 - is_row, is_row)), is_row, width)


def _em_step(
    samples: Tensor, grid: _Grid, weights: Tensor, means: Tensor, variances: Tensor, variance_floor: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One weighted EM step: samples [N,H,W] (sum 1) on `grid`; the mixture weights [N,M], means
    [N,M,2] and variances [N,M] -> the next ones.

    E-step: responsibilities r_m(i,j) = ey_m[i] ex_m[j] / sum_k ey_k[i] ex_k[j], the factors of
    w_m N(x; mean_m, variance_m I) along the rows and columns. M-step: w_m = sum p r_m, means and
    variances from sum p r_m (x - c_m)^k, k = 0..2, with c_m the old mean (sums about a nearby point
    keep the variance free of cancellation).
    """
    count, components = weights.shape
    width = grid.width
    tiny = torch.finfo(samples.dtype).tiny
    bound = 30.0 if samples.dtype == torch.float32 else 300.0
    offsets = grid.coordinates - means @ grid.pick  # [N,M,W+H]: x_j - mean_x, then y_i - mean_y
    log_weight = torch.log(weights.clamp_min(tiny)) - torch.log(variances)  # w / (2 pi var), up to 2 pi
    logs = torch.addcmul(
        log_weight.unsqueeze(-1) * grid.is_row, offsets * offsets, (-0.5 / variances).unsqueeze(-1)
    )
    factors = torch.exp((logs - logs.amax(1, keepdim=True)).clamp_(min=-bound))  # per pixel and axis
    first = factors * offsets
    second = first * offsets
    ex, ey = factors[..., :width], factors[..., width:]  # [N,M,W], [N,M,H]
    per_density = samples / torch.bmm(ey.transpose(1, 2), ex)  # p / mixture density (same scale)
    columns = torch.cat((ex, first[..., :width], second[..., :width]), 1)  # [N,3M,W]
    rows = torch.cat((ey, first[..., width:], second[..., width:]), 1)  # [N,3M,H]
    sums = torch.bmm(rows, torch.bmm(per_density, columns.transpose(1, 2)))  # [N,3M,3M]
    # sums[a m, b m] = sum_ij p r_m (y_i - c_y)^a (x_j - c_x)^b
    moments = sums.view(count, 3, components, 3, components).diagonal(dim1=2, dim2=4)  # [N,3,3,M]
    mass = moments[:, 0, 0]
    safe_mass = mass.clamp_min(tiny)
    shift = torch.stack((moments[:, 0, 1], moments[:, 1, 0]), dim=-1) / safe_mass.unsqueeze(-1)
    spread = (moments[:, 0, 2] + moments[:, 2, 0]) / safe_mass - (shift * shift).sum(-1)
    variances = torch.where(mass > tiny, (0.5 * spread).clamp_min(variance_floor), variances)
    weights = mass / mass.sum(-1, keepdim=True).clamp_min(tiny)
    return weights, means + shift, variances


def _stand_in_where_invalid(
    valid: Tensor,
    weights: Tensor,
    means: Tensor,
    variances: Tensor,
    height: int,
    width: int,
    variance_floor: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Invalid heatmaps' mixtures [N] replaced by the uniform grid's moments (module docstring;
    at least the floor)."""
    centre = means.new_tensor([(width - 1) / 2.0, (height - 1) / 2.0])
    spread = ((width * width - 1) / 12.0 + (height * height - 1) / 12.0) / 2.0
    keep = valid.unsqueeze(-1)
    return (
        torch.where(keep, weights, torch.full_like(weights, 1.0 / weights.shape[-1])),
        torch.where(keep.unsqueeze(-1), means, centre.expand_as(means)),
        torch.where(keep, variances, torch.full_like(variances, max(spread, variance_floor))),
    )
