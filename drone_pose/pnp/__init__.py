"""Differentiable Perspective-n-Point: batched LM solver, EPnP, implicit-gradient layer, EPro-PnP.

All functions take batched tensors (x2d [B,N,2] pixels, x3d [N,3] or [B,N,3] metres in the object
frame, K [3,3] or [B,3,3]) on any device and return camera<-object poses (R [B,3,3], t [B,3]).
"""

from drone_pose.pnp.epnp import epnp
from drone_pose.pnp.epro import derivative_regularization_loss, epro_pnp_loss
from drone_pose.pnp.layer import pnp_layer
from drone_pose.pnp.losses import projection_loss, regression_loss
from drone_pose.pnp.result import PnPResult, PnPStatus
from drone_pose.pnp.solver import solve_pnp

__all__ = [
    "PnPResult",
    "PnPStatus",
    "derivative_regularization_loss",
    "epnp",
    "epro_pnp_loss",
    "pnp_layer",
    "projection_loss",
    "regression_loss",
    "solve_pnp",
]
