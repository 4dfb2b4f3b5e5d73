"""Batched Levenberg-Marquardt PnP on the (weighted, optionally Huber-robustified) reprojection error.

Each sample is solved independently inside one set of batched tensor ops: no per-sample Python
loop and no OpenCV. Work is done in float64 (the problems are tiny; float32 Hessians of far
objects are ill-conditioned) and results are returned in the input dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from drone_pose.pnp.epnp import epnp, epnp_start
from drone_pose.pnp.projection import MIN_POINTS, apply_update, broadcast_inputs, cost_derivatives
from drone_pose.pnp.result import PnPResult, PnPStatus

COMPUTE_DTYPE = torch.float64
# CPU problems with at most this many keypoints (all samples together) run on one thread
SERIAL_MAX_POINTS = 4096


@contextlib.contextmanager
def serial_when_small(x2d: Tensor) -> Iterator[None]:
    """Run the enclosed ops of a small CPU problem (keypoints x2d [..., 2], at most SERIAL_MAX_POINTS)
    on the calling thread alone.

    The solvers' tensors are tiny, yet batched matmuls and LAPACK calls split them over the
    intra-op threads: on a machine whose cores are busy with other work (the network, other
    nodes) such an op then waits for a descheduled thread, and a sub-millisecond solve takes tens
    of milliseconds. With the OpenMP backend the thread count set here is the calling thread's
    own, and it is restored on exit.
    """
    threads = torch.get_num_threads()
    if x2d.device.type != "cpu" or threads == 1 or x2d.numel() > 2 * SERIAL_MAX_POINTS:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _safe_problem(count: int, K: Tensor) -> tuple[Tensor, Tensor]:
    """A well-posed stand-in problem (x2d [B,N,2], x3d [B,N,3]) for samples whose input is unusable."""
    index = torch.arange(count, dtype=K.dtype, device=K.device)
    angle = 2.0 * torch.pi * index / count
    x3d = torch.stack((0.5 * torch.cos(angle), 0.5 * torch.sin(angle), (index % 2) - 0.5), dim=-1)
    p = x3d.unsqueeze(0) + K.new_tensor([0.0, 0.0, 5.0])
    uvw = p @ K.transpose(-1, -2)
    return uvw[..., :2] / uvw[..., 2:3], x3d.unsqueeze(0).expand(K.shape[0], count, 3)


def _input_status(x2d: Tensor, x3d: Tensor, weights: Tensor, shared_model: bool) -> Tensor:
    """Per-sample status from the inputs alone: NON_FINITE_INPUT, DEGENERATE_POINTS or CONVERGED."""
    model = x3d[:1] if shared_model else x3d
    finite = torch.isfinite(x2d).flatten(1).all(1) & torch.isfinite(model).flatten(1).all(1)
    finite &= torch.isfinite(weights).flatten(1).all(1)
    status = torch.full(finite.shape, int(PnPStatus.CONVERGED), dtype=torch.int64, device=x2d.device)
    status[~finite] = int(PnPStatus.NON_FINITE_INPUT)
    used = (weights > 0).any(-1) & finite.unsqueeze(-1)
    if shared_model and bool(used.all()):  # one model, every point used: check its geometry once
        return status.masked_fill(
            _degenerate(x3d[:1], used[:1]).expand_as(status), int(PnPStatus.DEGENERATE_POINTS)
        )
    return status.masked_fill(finite & _degenerate(x3d, used), int(PnPStatus.DEGENERATE_POINTS))


def _degenerate(x3d: Tensor, used: Tensor) -> Tensor:
    """True [B] where fewer than 4 points are used or the used 3D points are collinear."""
    safe_x3d = torch.where(torch.isfinite(x3d), x3d, torch.zeros_like(x3d))
    mask = used.to(x3d.dtype).unsqueeze(-1)
    count = mask.sum(1)
    centred = safe_x3d - (safe_x3d * mask).sum(1, keepdim=True) / count.clamp_min(1).unsqueeze(-1)
    spread = torch.linalg.eigvalsh((centred * mask).transpose(-1, -2) @ centred)  # ascending
    collinear = spread[:, 1] <= 1e-10 * spread[:, 2].clamp_min(torch.finfo(x3d.dtype).tiny)
    return (count.squeeze(-1) < MIN_POINTS) | collinear | (spread[:, 2] <= 0)


def _newton_hessian(exact: Tensor) -> tuple[Tensor, Tensor]:
    """The Hessian for Newton steps [B,6,6] and a mask [B] where the exact Hessian is positive definite.

    Where the exact Hessian is indefinite (near saddles and far from the optimum) it is shifted by
    1.5 times its most negative eigenvalue: a descent direction that, unlike a Gauss-Newton step,
    still sees the negative curvature, so the solver leaves saddle regions in a few steps instead
    of crawling. Eigenvalues are computed only for those samples.
    """
    positive = torch.linalg.cholesky_ex(exact).info == 0
    if bool(positive.all()):
        return exact, positive
    finite = torch.isfinite(exact).flatten(1).all(1)  # non-finite ones are finished or rejected anyway
    indefinite = torch.nonzero(~positive & finite).squeeze(1)
    lowest = torch.linalg.eigvalsh(exact[indefinite])[:, 0]
    trace = exact[indefinite].diagonal(dim1=-2, dim2=-1).sum(-1)
    shift = torch.zeros(exact.shape[0], dtype=exact.dtype, device=exact.device)
    shift[indefinite] = -1.5 * lowest.clamp_max(0.0) + 1e-9 * trace.abs()
    return exact + shift[:, None, None] * torch.eye(6, dtype=exact.dtype, device=exact.device), positive


def levenberg_marquardt(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor,
    R: Tensor,
    t: Tensor,
    huber: float | None,
    max_iterations: int,
    tolerance: float,
    derivatives: Callable[..., tuple] = cost_derivatives,
    extra_inputs: tuple[Tensor, ...] = (),
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """Refine poses R [B,3,3], t [B,3] by damped Newton steps on the robust reprojection cost.

    Newton steps use the exact Hessian (quadratic convergence, also for large-residual problems
    where Gauss-Newton crawls; see `_newton_hessian` where it is indefinite), with Marquardt
    damping on the Gauss-Newton diagonal and cost-decrease acceptance. A rejected step from a
    nearly undamped start jumps to damping 1e-2 at once (the quadratic model was far off).
    Finished samples leave the working set, so a few slow problems do not keep the whole batch
    busy. Returns R, t, cost [B], the Gauss-Newton Hessian at the result [B,6,6], a done mask [B],
    depths [B,D] and the iterations.

    derivatives(x2d, x3d, K, weights, *extra_inputs, R, t, huber, exact) has the signature and
    results of `cost_derivatives` (the default; D = N): another cost over the same pose step, e.g.
    the multi-view one of drone_pose.fusion, whose extra inputs (batch first) are compacted with
    the others.
    """
    batch = x2d.shape[0]
    inputs = [x2d, x3d, K, weights, *extra_inputs]
    initial = derivatives(*inputs, R, t, huber, True)
    # R, t, cost, gradient, Gauss-Newton and exact Hessians, depths
    layout = (9, 3, 1, 6, 36, 36, initial[4].shape[1])

    def pack(R: Tensor, t: Tensor, values: tuple[Tensor, ...]) -> Tensor:
        cost, gradient, gauss_newton, exact, depth, _ = values
        return torch.cat(
            (R.flatten(1), t, cost[:, None], gradient, gauss_newton.flatten(1), exact.flatten(1), depth), 1
        )

    def unpack(state: Tensor) -> list[Tensor]:
        R, t, cost, gradient, gauss_newton, exact, depth = state.split(layout, dim=1)
        return [
            R.view(-1, 3, 3),
            t,
            cost[:, 0],
            gradient,
            gauss_newton.view(-1, 6, 6),
            exact.view(-1, 6, 6),
            depth,
        ]

    state = pack(R, t, initial)
    result = state.clone()
    index = torch.arange(batch, device=x2d.device)
    # small initial damping: the EPnP start is close, so the first steps are (nearly) Newton steps
    damping = torch.full((batch,), 1e-6, dtype=x2d.dtype, device=x2d.device)
    last_step = torch.zeros_like(damping)  # relative size of the last accepted Newton step (0: none)
    done_all = torch.zeros(batch, dtype=torch.bool, device=x2d.device)
    done = ~torch.isfinite(state[:, 12])  # the cost of every sample left in the working set is finite
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        R, t, cost, gradient, gauss_newton, exact, _ = unpack(state)
        H, positive = _newton_hessian(exact)
        marquardt = damping[:, None] * gauss_newton.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)
        step = -torch.linalg.solve_ex(H + torch.diag_embed(marquardt), gradient)[0]
        # A nearly undamped step below tolerance: the current pose is the optimum already.
        relative_step = step.norm(dim=-1) / (t.norm(dim=-1) + 1.0)
        small_step = relative_step <= tolerance
        done = done | (small_step & (damping <= 1e-2))
        step = torch.where(done.unsqueeze(-1) | ~torch.isfinite(step), 0.0, step)
        R_new, t_new = apply_update(R, t, step)
        candidate = pack(R_new, t_new, derivatives(*inputs, R_new, t_new, huber, True))
        # Near the optimum a Newton step changes the cost by less than its rounding: allow that slack
        # (costs are >= 0; a NaN or infinite candidate cost compares False).
        accept = (candidate[:, 12] <= cost * (1.0 + 1e-12)) & ~done
        state = torch.where(accept[:, None], candidate, state)
        # After an accepted exact-Newton step of relative size s with damping lambda, the error left
        # is about lambda s (the damped step falls short by that fraction) + C s^2 (quadratic
        # convergence), with the rate C ~ s / s_prev^2 over two such steps in a row (else C = 1,
        # which the clamp gives where s_prev = 0). Done without another iteration to confirm it
        # when that is below tolerance.
        newton = accept & positive & (damping <= 1e-3)
        rate = (relative_step / last_step.square().clamp_min(1e-300)).clamp_max(1.0)
        newton_converged = newton & (damping * relative_step + relative_step.square() * rate <= tolerance)
        done = done | (small_step & accept) | newton_converged | (damping >= 1e12)
        damping = torch.where(accept, damping * 0.1, (damping * 10.0).clamp_min(1e-2)).clamp(1e-15, 1e12)
        last_step = torch.where(newton, relative_step, 0.0)
        finished = int(done.sum())
        # Compact once a quarter of the working set is finished: fewer ops per iteration than every time.
        if 4 * finished >= done.numel() or iterations == max_iterations:
            if iterations == max_iterations or finished == done.numel():
                result[index] = state
                done_all[index[done]] = True
                break
            result[index[done]] = state[done]
            done_all[index[done]] = True
            keep = ~done
            index, damping, done, state = index[keep], damping[keep], done[keep], state[keep]
            last_step = last_step[keep]
            inputs = [v[keep] for v in inputs]
    R, t, cost, _, gauss_newton, _, depth = unpack(result)
    return R, t, cost, gauss_newton, done_all, depth, iterations


def _pose_covariance(H: Tensor, cost: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Covariance [B,6,6] = H^-1 * 2 cost / (2N - 6) and a flag [B] for singular Hessians."""
    variance = 2.0 * cost / max(2 * count - 6, 1)
    inverse = torch.linalg.inv_ex(H)
    singular = (inverse.info != 0) | ~torch.isfinite(inverse.inverse).flatten(1).all(1)
    covariance = inverse.inverse * variance[:, None, None]
    return torch.where(singular[:, None, None], torch.zeros_like(covariance), covariance), singular


def solve_pnp(
    x2d: Tensor,
    x3d: Tensor,
    K: Tensor,
    weights: Tensor | None = None,
    init: tuple[Tensor, Tensor] | None = None,
    huber: float | None = None,
    multi_hypothesis: bool = False,
    max_iterations: int = 50,
    tolerance: float | None = None,
) -> PnPResult:
    """Batched PnP: the pose camera<-object minimising the reprojection error.

    x2d [B,N,2] pixels; x3d [N,3] or [B,N,3] metres (object frame); K [3,3] or [B,3,3];
    weights [B,N] or [B,N,2] scale residuals (0 drops a point); init optional (R [B,3,3], t [B,3])
    e.g. the previous frame's pose; huber: Huber threshold in (weighted) pixels; multi_hypothesis
    refines all three EPnP candidates (and init) and keeps the lowest cost, for ambiguous views.

    Shapes, N < 4 and invalid K raise ValueError. Per-sample problems never produce NaN: they
    return identity/zero poses (or the best finite pose) with `status` saying why (PnPStatus).
    Not differentiable; use `pnp_layer` for gradients. tolerance: relative step size at which a
    pose counts as converged; default 1e-10 for float64 inputs and 1e-8 otherwise (the solver runs
    in float64, but a float32 result cannot carry more than ~1e-7 anyway).
    """
    input_dtype = x2d.dtype
    if tolerance is None:
        tolerance = 1e-10 if input_dtype == torch.float64 else 1e-8
    shared_model = x3d.ndim == 2 or x3d.shape[0] == 1 or x3d.stride(0) == 0
    with (
        torch.inference_mode(),
        serial_when_small(x2d),
    ):
        x2d, x3d, K, weights = broadcast_inputs(x2d, x3d, K, weights)
        x2d, K, weights = (v.to(COMPUTE_DTYPE) for v in (x2d, K, weights))
        # converted before broadcasting, so that a shared model stays one [N,3] block (stride 0)
        x3d = x3d[:1].to(COMPUTE_DTYPE).expand_as(x3d) if shared_model else x3d.to(COMPUTE_DTYPE)
        batch, count = x2d.shape[:2]
        status = _input_status(x2d, x3d, weights, shared_model)
        unusable = status != int(PnPStatus.CONVERGED)
        if unusable.any():
            safe_x2d, safe_x3d = _safe_problem(count, K)
            x2d = torch.where(unusable[:, None, None], safe_x2d, x2d)
            x3d = torch.where(unusable[:, None, None], safe_x3d, x3d)
            weights = torch.where(unusable[:, None, None], torch.ones_like(weights), weights)

        if multi_hypothesis:
            R0, t0, candidates_R, candidates_t = epnp(x2d, x3d, K, weights, return_candidates=True)
            starts_R, starts_t = list(candidates_R.unbind(1)), list(candidates_t.unbind(1))
        else:
            R0, t0 = epnp_start(x2d, x3d, K, weights)
            starts_R, starts_t = [R0], [t0]
        if init is not None:
            init_R, init_t = init_start(init, batch, R0, t0)
            starts_R.append(init_R)
            starts_t.append(init_t)
        hypotheses = len(starts_R)
        tile = lambda v: v.repeat(hypotheses, *([1] * (v.ndim - 1))) if hypotheses > 1 else v  # noqa: E731
        R, t, cost, H, done, depth, iterations = levenberg_marquardt(
            tile(x2d),
            tile(x3d),
            tile(K),
            tile(weights),
            torch.cat(starts_R),
            torch.cat(starts_t),
            huber,
            max_iterations,
            tolerance,
        )
        if hypotheses > 1:
            in_front = ((depth > 0) | (tile(weights).mean(-1) <= 0)).all(-1)
            score = torch.where(torch.isfinite(cost) & in_front, cost, torch.full_like(cost, torch.inf))
            best = score.view(hypotheses, batch).argmin(0) * batch + torch.arange(batch, device=x2d.device)
            R, t, cost, H, done, depth = R[best], t[best], cost[best], H[best], done[best], depth[best]

        covariance, singular = _pose_covariance(H, cost, count)
        behind = ((depth <= 0) & (weights.mean(-1) > 0)).any(-1)
        return final_result(
            R, t, cost, covariance, status, unusable, done, behind, singular, iterations, input_dtype
        )


def init_start(
    init: tuple[Tensor, Tensor], batch: int, fallback_R: Tensor, fallback_t: Tensor
) -> tuple[Tensor, Tensor]:
    """A caller's start (R [B,3,3] or [3,3], t [B,3] or [3]) in the compute dtype, expanded to the
    batch; samples where it is not finite take the fallback start [B,3,3], [B,3] instead."""
    init_R = init[0].to(COMPUTE_DTYPE).expand(batch, 3, 3)
    init_t = init[1].to(COMPUTE_DTYPE).expand(batch, 3)
    usable = torch.isfinite(init_R).flatten(1).all(1) & torch.isfinite(init_t).all(1)
    return torch.where(usable[:, None, None], init_R, fallback_R), torch.where(
        usable[:, None], init_t, fallback_t
    )


def final_result(
    R: Tensor,
    t: Tensor,
    cost: Tensor,
    covariance: Tensor,
    status: Tensor,
    unusable: Tensor,
    done: Tensor,
    behind: Tensor,
    singular: Tensor,
    iterations: int,
    dtype: torch.dtype,
) -> PnPResult:
    """The PnPResult of solved poses R [B,3,3], t [B,3] with cost [B] and covariance [B,6,6].

    status [B] holds the input statuses where `unusable` [B]; elsewhere it is set from the flags
    [B]: not `done` NOT_CONVERGED, `behind` BEHIND_CAMERA, non-finite or `singular`
    SOLVER_FAILURE. Unusable and non-finite samples get identity, zero, infinite cost and zero
    covariance; tensors are returned in `dtype`, detached from the solver's buffers.
    """
    finite = torch.isfinite(cost) & torch.isfinite(R).flatten(1).all(1) & torch.isfinite(t).all(1)
    status = torch.where(unusable, status, torch.full_like(status, int(PnPStatus.CONVERGED)))
    status[~unusable & ~done] = int(PnPStatus.NOT_CONVERGED)
    status[~unusable & behind] = int(PnPStatus.BEHIND_CAMERA)
    status[~unusable & (~finite | singular)] = int(PnPStatus.SOLVER_FAILURE)
    reset = unusable | ~finite
    R = torch.where(reset[:, None, None], torch.eye(3, dtype=R.dtype, device=R.device).expand_as(R), R)
    t = torch.where(reset[:, None], torch.zeros_like(t), t)
    cost = torch.where(reset, torch.full_like(cost, torch.inf), cost)
    covariance = torch.where(reset[:, None, None], torch.zeros_like(covariance), covariance)
    with torch.inference_mode(False):  # copies that autograd may use (the solver runs in inference mode)
        return PnPResult(
            R=R.to(dtype).clone(),
            t=t.to(dtype).clone(),
            cost=cost.to(dtype).clone(),
            converged=(status == int(PnPStatus.CONVERGED)).clone(),
            status=status.clone(),
            covariance=covariance.to(dtype).clone(),
            iterations=iterations,
        )
