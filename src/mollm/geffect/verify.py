"""The first-order check: one small SGD step on the objective changes the NLLs by about ``-eta * G-effect``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mollm.geffect.core import _dots, _grads, answer_nll
from mollm.geffect.groups import param_groups
from mollm.objectives.base import Batch, Objective


@dataclass
class FirstOrderCheck:
    """Predicted (``-eta e``) and measured NLL changes after ``theta <- theta - eta grad L_obj``.

    ``rel_err_*`` is ``|measured - predicted| / max(|predicted|, 0.05 max(|predicted_du|, |predicted_dr|))``; ``central_*`` is the symmetric difference
    ``(R(theta - eta g) - R(theta + eta g)) / 2``, whose error is third order, separating curvature from bugs.
    ``passed`` says every relative error is below ``tol``.
    """

    objective: str
    eta: float
    e_u: float
    e_r: float | None
    predicted_du: float
    measured_du: float
    central_du: float
    rel_err_u: float
    predicted_dr: float | None
    measured_dr: float | None
    central_dr: float | None
    rel_err_r: float | None
    tol: float
    passed: bool
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rel(measured: float, predicted: float, floor: float = 0.0) -> float:
    scale = max(abs(predicted), floor)
    if scale == 0.0:
        return 0.0 if measured == 0.0 else float("inf")
    return abs(measured - predicted) / scale


def verify_first_order(
    model: torch.nn.Module,
    objective: Objective,
    forget_batch: Batch,
    retain_batch: Batch | None = None,
    eta: float | None = None,
    reference: Any = None,
    *,
    objective_batch: Batch | None = None,
    tol: float = 0.05,
    target_change: float = 1e-3,
) -> FirstOrderCheck:
    """Take one SGD step of size ``eta`` on ``objective`` and compare the NLL changes with ``-eta * G-effect``.

    The parameters are restored exactly afterwards (the model is left as it was).

    Args:
        model: the model; its trainable parameters are stepped.
        objective: the objective (a loss to minimise); its batch is ``objective_batch`` or the forget batch.
        forget_batch / retain_batch: the risk batches (``e_u`` / ``e_r``).
        eta: the step size; ``None`` picks ``eta`` so the predicted forget-NLL change is ``target_change`` times the
            forget NLL (small enough to be first-order, large enough to rise above float32 rounding).
        reference: the frozen reference for objectives that need one.
        tol: the relative error under which the check passes.

    Raises:
        ValueError: ``eta`` is not positive, or the objective's gradient is zero (nothing to check).
    """
    if eta is not None and not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    params = param_groups(model).params
    batch = objective_batch if objective_batch is not None else forget_batch
    was_training = model.training
    model.eval()
    try:
        nll_f = answer_nll(model, forget_batch, what="forget_batch")
        g_f = _grads(nll_f, params, "forget NLL")
        nll_r = g_r = None
        if retain_batch is not None:
            nll_r = answer_nll(model, retain_batch, what="retain_batch")
            g_r = _grads(nll_r, params, "retain NLL")
        g_o = _grads(objective(model, batch, reference), params, "objective")
        e_u = sum(_dots(g_f, g_o))
        e_r = sum(_dots(g_r, g_o)) if g_r is not None else None
        scale = max(abs(e_u), abs(e_r or 0.0))
        if scale == 0.0:
            raise ValueError("the objective's G-effects are exactly zero (zero gradient?); nothing to verify")
        if eta is None:
            eta = target_change * max(float(nll_f.detach()), 1e-3) / scale
        saved = [p.detach().clone() for p in params]

        def risks_at(sign: float) -> tuple[float, float | None]:
            with torch.no_grad():
                for p, s, g in zip(params, saved, g_o):
                    p.copy_(s - sign * eta * g)
                f = float(answer_nll(model, forget_batch))
                r = float(answer_nll(model, retain_batch)) if retain_batch is not None else None
            return f, r

        try:
            f_minus, r_minus = risks_at(+1.0)  # the SGD step theta - eta g
            f_plus, r_plus = risks_at(-1.0)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        f0 = float(nll_f.detach())
        pred_u = -eta * e_u
        meas_u = f_minus - f0
        # Errors are relative to the predicted change, floored at 5 % of the larger prediction: a retain change
        # near zero cannot be measured more finely than the model's rounding (RMSNorm runs in float32 even in a
        # float64 model).
        floor = 0.05 * max(abs(pred_u), abs(eta * (e_r or 0.0)))
        rel_u = _rel(meas_u, pred_u, floor)
        pred_r = meas_r = cen_r = rel_r = None
        if retain_batch is not None and nll_r is not None and e_r is not None:
            pred_r = -eta * e_r
            meas_r = r_minus - float(nll_r.detach())
            cen_r = (r_minus - r_plus) / 2
            rel_r = _rel(meas_r, pred_r, floor)
        passed = rel_u < tol and (rel_r is None or rel_r < tol)
        return FirstOrderCheck(
            objective=str(getattr(objective, "name", type(objective).__name__)),
            eta=eta,
            e_u=e_u,
            e_r=e_r,
            predicted_du=pred_u,
            measured_du=meas_u,
            central_du=(f_minus - f_plus) / 2,
            rel_err_u=rel_u,
            predicted_dr=pred_r,
            measured_dr=meas_r,
            central_dr=cen_r,
            rel_err_r=rel_r,
            tol=tol,
            passed=passed,
            dtype=str(params[0].dtype).replace("torch.", ""),
        )
    finally:
        model.train(was_training)
