"""The conflict-aware family (gru, ngdiff, aligned_mtl, dualproj, imtl_g, nash_mtl): dense references, symmetry,
degenerate inputs, the aggregator state interface, and each method's "never conflicts?" claim backed both ways — a
property test where it holds, a concrete conflicting case where it does not (the README table cites these)."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_aggregators import (
    DEGENERATE,
    FAMILY,
    NAMES,
    PROPS,
    _project_dual_cone,
    gram,
    jacobians,
    nonconflict_tol,
    well_conditioned,
)

from mollm.aggregators import available, get
from mollm.aggregators.nash_mtl import _RIDGE

T64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=T64)


def no_conflict(g: torch.Tensor, c: torch.Tensor) -> bool:
    return bool((g @ c >= -nonconflict_tol(g, c)).all())


# ---------------------------------------------------------------------------------------------------------- contract
def test_family_is_registered_with_documented_sources():
    assert set(FAMILY) <= set(available())
    for name in FAMILY:
        agg = get(name)
        assert agg.name == name
        module_doc = importlib.import_module(type(agg).__module__).__doc__
        assert "Source checked" in module_doc and "Never conflicts" in module_doc, name


@pytest.mark.parametrize("name", FAMILY)
def test_output_dtype_device_shape(name):
    j = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0], [0.0, 0.3, 2.0]])
    c = get(name)(gram(j))
    assert c.dtype == torch.float32 and c.shape == (3,)
    c64 = get(name)(gram(j.double()))
    assert torch.allclose(c.double(), c64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("gru", {"forget": -1}, "forget"),
        ("gru", {"forget": 1.5}, "forget"),
        ("gru", {"retain": []}, "retain"),
        ("gru", {"retain": [1, 1]}, "retain"),
        ("gru", {"retain": [-2]}, "retain"),
        ("gru", {"retain": ["1"]}, "retain"),
        ("gru", {"retain": [True]}, "retain"),
        ("gru", {"retain": 1}, "retain"),
        ("ngdiff", {"groups": [[0], [1.0]]}, "groups"),
        ("ngdiff", {"groups": []}, "groups"),
        ("gru", {"retain_weight": -0.1}, "retain_weight"),
        ("gru", {"ema_decay": 1.0}, "ema_decay"),
        ("gru", {"ema": 0.9}, "ema"),
        ("ngdiff", {"groups": [[0], []]}, "groups"),
        ("ngdiff", {"groups": [[0, 1], [1]]}, "groups"),
        ("dualproj", {"preference": [1.0, float("inf")]}, "preference"),
        ("dualproj", {"preference": []}, "preference"),
        ("aligned_mtl", {"scale_mode": "max"}, "scale_mode"),
        ("imtl_g", {"eps": 1e-3}, "eps"),
        ("nash_mtl", {"max_norm": 0.0}, "max_norm"),
        ("nash_mtl", {"update_weights_every": 0}, "update_weights_every"),
        ("nash_mtl", {"optim_niter": 20}, "optim_niter"),
    ],
)
def test_bad_options_name_the_field(name, options, field):
    with pytest.raises(ValueError, match=f"aggregator '{name}'.*option '{field}['.]"):
        get(name, **options)


def test_roles_and_lengths_are_checked_at_call():
    g = torch.eye(3, dtype=T64)
    with pytest.raises(ValueError, match="contains the forget index"):
        get("gru", forget=1, retain=[1, 2])
    with pytest.raises(ValueError, match=r"indices \[3\] out of range"):
        get("gru", forget=3)(g)
    with pytest.raises(ValueError, match="needs a retain objective"):
        get("gru")(torch.eye(1, dtype=T64))
    with pytest.raises(ValueError, match="each of the 3 objective indices exactly once"):
        get("ngdiff", groups=[[0], [1]])(g)
    for name in ("dualproj", "aligned_mtl"):
        with pytest.raises(ValueError, match="'preference' has 2 values but there are 3 objectives"):
            get(name, preference=[1.0, 1.0])(g)


# ------------------------------------------------------------------------------------------------ degenerate inputs
@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("name", FAMILY)
def test_degenerate_inputs_never_nan(name, case):
    j = DEGENERATE[case]
    for dtype in (torch.float64, torch.float32):
        c = get(name)(gram(j).to(dtype))
        assert torch.isfinite(c).all(), (name, case, c)


def test_degenerate_expected_values():
    zero = gram(DEGENERATE["zero"])
    for name in FAMILY:
        c = get(name)(zero)
        assert torch.isfinite(c).all()
        if name != "gru":  # gru's coefficients are roles (c_forget = 1), d = 0 anyway
            assert torch.equal(c, torch.zeros(3, dtype=T64)), name
    # Exactly opposite gradients: the projecting / bargaining / impartial methods stop (no common descent direction).
    opp = DEGENERATE["opposite"]
    for name in ("dualproj", "imtl_g", "gru", "ngdiff"):
        assert (opp.T @ get(name)(gram(opp))).norm() < 1e-9, name
    assert (opp.T @ get("nash_mtl")(gram(opp))).norm() < 1e-3 * float(opp.norm())  # up to the ridge
    # A zero gradient gets coefficient 0 where the method normalises by it.
    one_zero = gram(DEGENERATE["one_zero"])
    for name in ("ngdiff", "imtl_g", "nash_mtl"):
        assert get(name)(one_zero)[2] == 0.0, name


@PROPS
@given(jacobians(max_m=5))
def test_finite_on_random_jacobians_of_any_rank(j):
    g = gram(j)
    for name in FAMILY:
        assert torch.isfinite(get(name)(g)).all(), name


# ------------------------------------------------------------------------------------ permutation and scale symmetry
PERMUTABLE = ["aligned_mtl", "dualproj", "imtl_g", "nash_mtl", "ngdiff"]


@PROPS
@given(jacobians(), st.randoms(use_true_random=False))
def test_permutation_equivariance(j, rnd):
    m = j.shape[0]
    perm = list(range(m))
    rnd.shuffle(perm)
    jp = j[perm]
    scale = float(j.norm(dim=1).max())
    exact = m <= j.shape[1] and well_conditioned(j)
    cases = [(name, {}, {}) for name in PERMUTABLE]
    pref = [float(i + 1) for i in range(m)]
    cases.append(("dualproj", {"preference": pref}, {"preference": [pref[k] for k in perm]}))
    cases.append(("gru", {"forget": 0}, {"forget": perm.index(0)}))  # the forget objective keeps its role
    for name, opts, opts_p in cases:
        c, cp = get(name, **opts)(gram(j)), get(name, **opts_p)(gram(jp))
        d, dp = j.T @ c, jp.T @ cp
        assert torch.allclose(d, dp, rtol=1e-5, atol=1e-5 * max(scale, float(d.norm()))), name
        if exact:
            assert torch.allclose(c[perm], cp, rtol=1e-5, atol=1e-7 * float(c.abs().max())), name


@PROPS
@given(jacobians(max_scale_exp=0), st.floats(-4, 4))
def test_scaling_all_gradients(j, exp):
    s = 10.0**exp
    g, gs = gram(j), gram(s * j)
    exact = j.shape[0] <= j.shape[1] and well_conditioned(j)
    scale = float(j.norm(dim=1).max())
    for name in ["gru", "aligned_mtl", "dualproj", "imtl_g", "nash_mtl"]:
        c, cs = get(name)(g), get(name)(gs)
        # Scale-free coefficients: d(s·J) = s·d(J).
        assert torch.allclose(s * (j.T @ c), (s * j).T @ cs, rtol=1e-5, atol=1e-5 * s * scale), name
        if exact:
            assert torch.allclose(c, cs, rtol=1e-6, atol=1e-8 * float(c.abs().max())), name
    # NGDiff sums unit vectors: d itself does not change, c scales by 1/s.
    d, ds = j.T @ get("ngdiff")(g), (s * j).T @ get("ngdiff")(gs)
    assert torch.allclose(d, ds, rtol=1e-6, atol=1e-9 * j.shape[0])


# --------------------------------------------------------------------------------------------------------------- gru
def _gru_dense(j: torch.Tensor, forget: int, retain: list[int], weight: float = 0.0) -> torch.Tensor:
    gf, gr = j[forget], j[retain].sum(dim=0)
    inner, sq = float(gf @ gr), float(gr @ gr)
    out = gf - (min(inner, 0.0) / sq) * gr if sq > 0 else gf.clone()
    others = [x for x in range(j.shape[0]) if x != forget and x not in retain]
    return out + weight * gr + j[others].sum(dim=0)


@PROPS
@given(jacobians(), st.sampled_from([0.0, 0.5]), st.data())
def test_gru_matches_dense_projection(j, weight, data):
    m = j.shape[0]
    forget = data.draw(st.integers(0, m - 1))
    rest = [x for x in range(m) if x != forget]
    retain = data.draw(st.lists(st.sampled_from(rest), min_size=1, max_size=len(rest), unique=True))
    scale = float(j.norm(dim=1).max())
    for opts, r in (({"forget": forget}, rest), ({"forget": forget, "retain": retain}, retain)):
        c = get("gru", retain_weight=weight, **opts)(gram(j))
        assert torch.allclose(j.T @ c, _gru_dense(j, forget, r, weight), rtol=1e-6, atol=1e-6 * m * scale)


@PROPS
@given(jacobians(), st.sampled_from([0.0, 0.5, 2.0]))
def test_gru_never_conflicts_with_the_summed_retain_gradient(j, weight):
    # Claim: ema off and no pass-through objectives ⇒ ⟨d, Σ_{j∈R} g_j⟩ ≥ 0, for any m and retain_weight.
    g = gram(j)
    c = get("gru", retain_weight=weight)(g)
    retain_change = float((g @ c)[1:].sum())
    assert retain_change >= -nonconflict_tol(g, c), retain_change


@PROPS
@given(jacobians(min_m=2, max_m=2))
def test_gru_with_two_objectives_never_conflicts(j):
    # Claim: m = 2, ema off, retain_weight 0 ⇒ G c ≥ 0 for both objectives.
    g = gram(j)
    for opts in ({}, {"forget": 1}):
        c = get("gru", **opts)(g)
        assert no_conflict(g, c), (opts, g @ c)


def test_gru_conflicting_cases():
    # (a) Only the retain *sum* is protected: g_f conflicts with g_1, g_2 is aligned with g_f.
    j = t([[1.0, 0.0], [-1.0, 1.0], [2.0, 0.5]])
    g = gram(j)
    c = get("gru")(g)
    assert float((g @ c)[1:].sum()) >= 0.0 and (g @ c)[1] < -0.1
    # (b) retain_weight > 0 can make the forget objective worse (2 objectives, strongly opposed).
    j2 = t([[1.0, 0.1], [-1.0, 0.0]])
    assert (gram(j2) @ get("gru", retain_weight=1.0)(gram(j2)))[0] < -0.1
    assert no_conflict(gram(j2), get("gru")(gram(j2)))
    # (c) A pass-through objective (neither role) is added unprojected and can undo the protection.
    j3 = t([[1.0, 0.0], [0.0, 1.0], [0.0, -2.0]])
    c3 = get("gru", retain=[1])(gram(j3))
    assert torch.equal(c3, t([1.0, 0.0, 1.0])) and (gram(j3) @ c3)[1] < 0
    # (d) With the EMA the current retain gradient can be made worse: the smoothed conflict lags the current one.
    agg = get("gru", ema_decay=0.5)
    agg(gram(t([[1.0, 0.0], [0.0, 1.0]])))  # no conflict yet: s̄ = 0, n̄ = 0.5
    j4 = t([[1.0, -1.0], [0.0, 1.0]])  # now ⟨g_f, g_r⟩ = −1: s̄ = −0.5, n̄ = 0.75, λ = 2/3 < 1
    c4 = agg(gram(j4))
    assert math.isclose(float(c4[1]), 2.0 / 3.0, rel_tol=1e-12)
    assert (gram(j4) @ c4)[1] < -0.3
    assert (gram(j4) @ get("gru")(gram(j4)))[1] == 0.0  # without the EMA: exactly orthogonal


def test_gru_hand_example():
    # g_f = (1, 0), g_r = (−1, 1): ⟨g_f, g_r⟩ = −1, ‖g_r‖² = 2, so g̃_f = g_f + ½ g_r = (½, ½).
    j = t([[1.0, 0.0], [-1.0, 1.0]])
    c = get("gru")(gram(j))
    assert torch.allclose(c, t([1.0, 0.5])) and torch.allclose(j.T @ c, t([0.5, 0.5]))
    # Not conflicting: nothing is removed. retain_weight adds the retain gradient (the authors' _gru+ce variant).
    j_ok = t([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(get("gru")(gram(j_ok)), t([1.0, 0.0]))
    assert torch.equal(get("gru", retain_weight=0.3)(gram(j_ok)), t([1.0, 0.3]))


def test_gru_ema_tracks_what_it_documents():
    rng = np.random.default_rng(5)
    beta = 0.7
    gf = torch.tensor(rng.standard_normal(6))
    agg, vector_ema, seq = get("gru", ema_decay=beta), torch.zeros(6, dtype=T64), []
    for step in range(12):
        gr = torch.tensor(rng.standard_normal(6)) + 0.5 * gf * (-1) ** step  # noisy retain gradient
        j = torch.stack([gf, gr])
        c = agg(gram(j))
        # The authors' recursion: ḡ_r ← γ g_r + (1 − γ) ḡ_r with γ = 1 − ema_decay, started at 0.
        vector_ema = (1 - beta) * gr + beta * vector_ema
        state = agg.state_dict()
        # With a constant forget gradient, s̄ is exactly the vector EMA's ⟨g_f, ḡ_r⟩ ...
        assert math.isclose(state["ema_inner"], float(gf @ vector_ema), rel_tol=1e-12, abs_tol=1e-12)
        # ... while n̄, the EMA of ‖g_r‖², overestimates: ‖ḡ_r‖² ≤ (1 − β^{t+1}) n̄ (Cauchy–Schwarz), strictly here.
        assert float(vector_ema @ vector_ema) < (1 - beta ** (step + 1)) * state["ema_retain_sq"]
        lam = max(0.0, -state["ema_inner"] / state["ema_retain_sq"])
        assert math.isclose(float(c[1]), lam, rel_tol=1e-12, abs_tol=1e-15)
        seq.append(c)
    assert state["calls"] == 12
    # Constant gradients: the ratio s̄/n̄ is the current s/n, so the EMA changes nothing.
    j = t([[1.0, 0.0], [-1.0, 1.0]])
    agg = get("gru", ema_decay=0.9)
    for _ in range(5):
        assert torch.allclose(agg(gram(j)), get("gru")(gram(j)), rtol=1e-14)


# ------------------------------------------------------------------------------------------------------------ ngdiff
@PROPS
@given(jacobians())
def test_ngdiff_is_the_sum_of_unit_gradients(j):
    norms = j.norm(dim=1, keepdim=True)
    expected = (j / norms).sum(dim=0)
    assert torch.allclose(j.T @ get("ngdiff")(gram(j)), expected, rtol=1e-6, atol=1e-6 * j.shape[0])
    # Forget against the summed rest (the paper's two-task form with several retain-side objectives).
    if j.shape[0] >= 3:
        rest = j[1:].sum(dim=0)
        if float(rest.norm()) > 1e-6 * float(j[1:].norm(dim=1).sum()):
            c = get("ngdiff", groups=[[0], list(range(1, j.shape[0]))])(gram(j))
            expected = j[0] / j[0].norm() + rest / rest.norm()
            assert torch.allclose(j.T @ c, expected, rtol=1e-5, atol=1e-6)


@PROPS
@given(jacobians())
def test_ngdiff_two_groups_never_conflict(j):
    # Claim: with two groups (2 objectives, or forget vs the rest) neither group's summed objective gets worse.
    g = gram(j)
    m = j.shape[0]
    groups = [[0], list(range(1, m))]
    c = get("ngdiff", groups=groups)(g)
    gc = g @ c
    sums = torch.stack([gc[grp].sum() for grp in groups])
    assert (sums >= -nonconflict_tol(g, c)).all(), sums
    if m == 2:
        assert no_conflict(g, get("ngdiff")(g))


def test_ngdiff_conflicts_with_three_objectives():
    # Two aligned unit gradients outvote a third at 120°: ⟨g_3, d⟩ = 2cos(120°) + 1 = 0; past 120° it is negative.
    angle = math.radians(135.0)
    j = t([[1.0, 0.0], [1.0, 0.0], [math.cos(angle), math.sin(angle)]])
    g = gram(j)
    assert (g @ get("ngdiff")(g))[2] < -0.4


def test_ngdiff_hand_example():
    j = t([[3.0, 0.0], [0.0, -0.5]])
    c = get("ngdiff")(gram(j))
    assert torch.allclose(c, t([1 / 3.0, 2.0])) and torch.allclose(j.T @ c, t([1.0, -1.0]))


# ---------------------------------------------------------------------------------------------------------- dualproj
@PROPS
@given(jacobians(), st.data())
def test_dualproj_never_conflicts(j, data):
    g = gram(j)
    m = j.shape[0]
    pref = data.draw(st.lists(st.floats(-2.0, 2.0), min_size=m, max_size=m))
    for opts, u in (({}, [1.0 / m] * m), ({"preference": pref}, pref)):
        c = get("dualproj", **opts)(g)
        # c = u + x can cancel to ~0: rounding is relative to the preference's size, not to c's.
        tol = nonconflict_tol(g, c) + 1e-7 * float(torch.trace(g)) * sum(abs(x) for x in u)
        assert (g @ c >= -tol).all(), (opts, g @ c)


@PROPS
@given(jacobians(max_scale_exp=0))
def test_dualproj_matches_dense_projection_of_the_mean(j):
    jn = j.numpy() / float(j.norm(dim=1).max())
    c = get("dualproj")(torch.tensor(jn @ jn.T))
    mean = jn.mean(axis=0)
    dense = _project_dual_cone(jn, mean)
    ours = jn.T @ c.numpy()
    # Feasible (up to the 1e-12 ridge), at least as close to the mean as SLSQP's projection, and the same point (the
    # projection is unique; with m > n the solution is flat along some directions, hence the looser tolerance).
    assert (jn @ ours >= -1e-8).all()
    assert np.sum((ours - mean) ** 2) <= np.sum((dense - mean) ** 2) + 1e-9
    assert np.allclose(ours, dense, atol=1e-4)


def test_dualproj_hand_example():
    # mean of g1 = (1, 0), g2 = (−1, 1) is (0, ½): it conflicts with neither, so it is its own projection.
    j = t([[1.0, 0.0], [-1.0, 1.0]])
    assert torch.allclose(j.T @ get("dualproj")(gram(j)), t([0.0, 0.5]), atol=1e-9)
    # g1 = (1, 0), g2 = (−3, 1): the mean (−1, ½) conflicts with g1; its nearest point with x₁ ≥ 0 and −3x₁ + x₂ ≥ 0
    # is (0, ½) (distance 1; the other edge's nearest point (0.05, 0.15) is farther).
    j = t([[1.0, 0.0], [-3.0, 1.0]])
    assert torch.allclose(j.T @ get("dualproj")(gram(j)), t([0.0, 0.5]), atol=1e-9)


# ------------------------------------------------------------------------------------------------------- aligned_mtl
@PROPS
@given(jacobians(max_scale_exp=0), st.sampled_from(["min", "median", "rmse"]))
def test_aligned_mtl_matches_dense_svd(j, mode):
    # Dense: J = U S Vᵀ; the aligned system B J = √σ U Vᵀ has all singular values √σ; d = Jᵀ B w = √σ V Uᵀ w.
    m = j.shape[0]
    u, s, vh = torch.linalg.svd(j, full_matrices=False)
    lam = s.square()
    thr = m * float(np.finfo(np.float32).eps) * float(lam.max())
    if ((lam > thr / 10) & (lam < thr * 10)).any():
        return  # the rank decision is ambiguous here
    keep = lam > thr
    kept = lam[keep].numpy()
    sig = {"min": kept.min(), "median": float(np.median(kept)), "rmse": kept.mean()}[mode]
    w = torch.full((m,), 1.0 / m, dtype=T64)
    dense = math.sqrt(sig) * vh[keep].T @ (u[:, keep].T @ w)
    c = get("aligned_mtl", scale_mode=mode)(gram(j))
    assert torch.allclose(j.T @ c, dense, rtol=1e-6, atol=1e-8 * float(s.max()))


def test_aligned_mtl_conflicts_with_two_objectives():
    # J symmetric positive definite, so G^{1/2} = J and G c = √λ_min · J·(½, ½) = √λ_min · (−¼, 1.25).
    j = t([[1.0, -1.5], [-1.5, 4.0]])
    g = gram(j)
    gc = g @ get("aligned_mtl")(g)
    lam_min = float(torch.linalg.eigvalsh(g)[0])
    assert torch.allclose(gc, math.sqrt(lam_min) * t([-0.25, 1.25]), rtol=1e-9)
    assert gc[0] < 0


# ------------------------------------------------------------------------------------------------------------ imtl_g
@PROPS
@given(jacobians())
def test_imtl_g_equal_projections_and_weights_sum_to_one(j):
    g = gram(j)
    c = get("imtl_g")(g)
    assert math.isclose(float(c.sum()), 1.0, rel_tol=1e-9)
    norms = j.norm(dim=1)
    proj = (g @ c) / norms  # ⟨d, g_i/‖g_i‖⟩
    d_norm = float((j.T @ c).norm())
    if j.shape[0] <= j.shape[1] and well_conditioned(j):
        # Full rank: TorchJD's closed form G⁻¹n / 1ᵀG⁻¹n, and the paper's condition.
        v = torch.linalg.solve(g, norms)
        assert torch.allclose(c, v / v.sum(), rtol=1e-6, atol=1e-9 * float(c.abs().max()))
        assert torch.allclose(proj, proj.mean().expand_as(proj), rtol=1e-6, atol=1e-9 * d_norm)


@PROPS
@given(jacobians(min_m=2, max_m=2))
def test_imtl_g_with_two_objectives_never_conflicts(j):
    g = gram(j)
    c = get("imtl_g")(g)
    assert no_conflict(g, c), g @ c


def test_imtl_g_opposite_gradients_stop_where_the_pseudo_inverse_conflicts():
    # g_2 = −t·g_1: the paper's condition gives α = (t, 1)/(1 + t) and d = 0.
    u = t([1.0, 2.0, -1.0])
    tt = 0.5
    j = torch.stack([u, -tt * u])
    g = gram(j)
    c = get("imtl_g")(g)
    assert torch.allclose(c, t([tt, 1.0]) / (1 + tt), rtol=1e-9)
    assert (j.T @ c).norm() < 1e-12
    # TorchJD's G⁺n / Σ makes one objective worse here (what the module docstring says it avoids).
    v = torch.linalg.pinv(g) @ j.norm(dim=1)
    assert (g @ (v / v.sum())).min() < -0.1


def test_imtl_g_conflicts_with_every_objective_for_three():
    j = t([[0.0, 3.0, -2.0], [-3.0, 3.0, 0.0], [-1.0, 2.0, -1.0]])
    g = gram(j)
    gc = g @ get("imtl_g")(g)
    assert (gc < -1.0).all(), gc
    # ... although a common descent direction exists (mgda's min-norm direction improves all three).
    assert (g @ get("mgda")(g) > 0.1).all()


# ---------------------------------------------------------------------------------------------------------- nash_mtl
@PROPS
@given(jacobians())
def test_nash_mtl_never_conflicts(j):
    g = gram(j)
    c = get("nash_mtl")(g)
    assert no_conflict(g, c), g @ c
    # The precise bound: (G c)_i ≥ −ε ‖G‖_F c_i (the ridge), up to rounding.
    frob = float(torch.linalg.matrix_norm(g))
    assert ((g @ c) >= -_RIDGE * frob * c - 1e-9 * frob * float(c.abs().sum())).all()


@PROPS
@given(jacobians(full_rank=True, max_scale_exp=0))
def test_nash_mtl_solves_the_bargaining_problem(j):
    m = j.shape[0]
    if m > j.shape[1] or not well_conditioned(j, 0.05):
        return
    g = gram(j)
    c = get("nash_mtl")(g)
    frob = float(torch.linalg.matrix_norm(g))
    # Nash condition on Ĝ = G/‖G‖_F, up to the ridge: α_i (Ĝα)_i = 1 − ε α_i².
    gc = (g / frob) @ c
    assert torch.allclose(c * gc, 1.0 - _RIDGE * c.square(), rtol=1e-9)
    # Parameter-space check: d maximises Σ log⟨g_i, d'⟩ on the sphere ‖d'‖ = ‖d‖ (the bargaining solution).
    d = j.T @ c
    # ‖d‖² = αᵀGα = ‖G‖_F Σ_i (1 − ε α_i²): m ‖G‖_F without the ridge.
    assert math.isclose(float(d.square().sum()), frob * float((1.0 - _RIDGE * c.square()).sum()), rel_tol=1e-9)
    best = float(torch.log(j @ d).sum())
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        other = d + 0.05 * float(d.norm()) * torch.randn(d.shape, dtype=T64, generator=gen)
        other = other * (d.norm() / other.norm())
        proj = j @ other
        if (proj > 0).all():
            assert float(torch.log(proj).sum()) <= best + 1e-9


def test_nash_mtl_hand_example_and_max_norm():
    # Orthogonal gradients of norms 1 and 2: α_i = 1/‖ĝ_i‖ (ridge aside); d = ĝ-sum scaled, equal shares.
    j = t([[1.0, 0.0], [0.0, 2.0]])
    g = gram(j)
    frob = float(torch.linalg.matrix_norm(g))
    c = get("nash_mtl")(g)
    expected = 1.0 / torch.sqrt(torch.diagonal(g) / frob + _RIDGE)
    assert torch.allclose(c, expected, rtol=1e-12)
    d = j.T @ c
    assert math.isclose(float(d[0]), float(d[1]), rel_tol=1e-7)  # equal shares, up to the ridge
    clipped = get("nash_mtl", max_norm=0.5)(g)
    assert math.isclose(float((j.T @ clipped).norm()), 0.5, rel_tol=1e-12)
    assert torch.allclose(clipped / clipped.norm(), c / c.norm())
    assert torch.equal(get("nash_mtl", max_norm=1e6)(g), c)  # below the cap: unchanged


def test_nash_mtl_reused_weights_can_conflict():
    # update_weights_every = 2: the second call reuses α computed for other gradients.
    agg = get("nash_mtl", update_weights_every=2)
    agg(gram(t([[1.0, 0.0], [0.0, 1.0]])))
    j = t([[1.0, 0.0], [-3.0, 0.2]])
    c = agg(gram(j))
    assert (gram(j) @ c)[0] < -1.0
    assert no_conflict(gram(j), get("nash_mtl")(gram(j)))
    assert no_conflict(gram(j), agg(gram(j)))  # third call: recomputed


# ---------------------------------------------- the "no" entries of the original table (yes: tests/test_aggregators.py)
def test_linear_cagrad_pcgrad_can_conflict():
    j = t([[-3.0, 3.0], [0.0, -1.0]])
    g = gram(j)
    assert (g @ get("linear")(g))[1] < -1.0
    assert (g @ get("cagrad")(g))[1] < -0.2  # default c = 0.4: the ball around the mean misses the dual cone
    # PCGrad needs 3 objectives (for 2 it cannot conflict); this one conflicts whatever order is drawn.
    j3 = t([[0.0, 3.0], [-2.0, 2.0], [1.0, -3.0]])
    g3 = gram(j3)
    for seed in range(20):
        assert (g3 @ get("pcgrad", seed=seed)(g3)).min() < -0.5, seed


# ------------------------------------------------------------------------------------------------- state interface
def _random_gramians(count: int, m: int, seed: int) -> list[torch.Tensor]:
    """Random Gramians in which objective 0 conflicts with the sum of the others (so gru projects every time)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        j = rng.standard_normal((m, 7))
        j[0] = -j[1:].sum(axis=0) + 0.5 * rng.standard_normal(7)
        out.append(gram(torch.tensor(j)))
    return out


STATEFUL = [
    ("gru", {"ema_decay": 0.6}),
    ("gru", {"ema_decay": 0.0, "retain": [2], "retain_weight": 0.1}),
    ("nash_mtl", {"update_weights_every": 3}),
    ("nash_mtl", {"update_weights_every": 2, "max_norm": 0.5}),
    ("pcgrad", {"seed": 4}),
]


@pytest.mark.parametrize(("name", "opts"), STATEFUL)
@pytest.mark.parametrize("cut", [0, 1, 4])
def test_save_load_resumes_exactly(name, opts, cut):
    grams = _random_gramians(8, 3, seed=11)
    reference = get(name, **opts)
    uninterrupted = [reference(g) for g in grams]
    first = get(name, **opts)
    for g in grams[:cut]:
        first(g)
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))  # what a checkpoint stores
    resumed = get(name, **opts)
    resumed.load_state_dict(state)
    for g, expected in zip(grams[cut:], uninterrupted[cut:], strict=True):
        assert torch.equal(resumed(g), expected), (name, opts, cut)
    assert resumed.state_dict() == reference.state_dict()


@pytest.mark.parametrize(("name", "opts"), [s for s in STATEFUL if s[1].get("ema_decay") != 0.0])
def test_state_matters(name, opts):
    # After one call, a fresh aggregator (state not loaded) gives other coefficients: the resume test can fail.
    grams = _random_gramians(6, 3, seed=12)
    advanced, fresh = get(name, **opts), get(name, **opts)
    advanced(grams[0])
    assert any(not torch.equal(advanced(g), fresh(g)) for g in grams[1:])


def test_stateless_aggregators_have_empty_state():
    stateless = [n for n in NAMES + FAMILY if n != "pcgrad"]
    for name in stateless:
        agg = get(name)
        agg(torch.eye(2, dtype=T64))
        if name == "nash_mtl":
            continue  # always reports its call counter and last weights
        assert agg.state_dict() == {}, name
        agg.load_state_dict({})
        with pytest.raises(ValueError, match="stateless"):
            agg.load_state_dict({"calls": 1})
    assert get("gru").state_dict() == {}  # no EMA: nothing to keep


@pytest.mark.parametrize(
    ("name", "opts", "state", "message"),
    [
        ("gru", {"ema_decay": 0.5}, {"calls": 1}, "missing"),
        ("gru", {"ema_decay": 0.5}, {"calls": 1, "ema_inner": 0.0, "ema_retain_sq": -1.0}, "ema_retain_sq"),
        ("gru", {"ema_decay": 0.5}, {"calls": 1, "ema_inner": None, "ema_retain_sq": 1.0}, "ema_inner"),
        ("gru", {"ema_decay": 0.5}, {"calls": -1, "ema_inner": 0.0, "ema_retain_sq": 1.0}, "calls"),
        ("nash_mtl", {}, {"calls": 0, "alpha": [1.0], "extra": 1}, "unexpected"),
        ("nash_mtl", {}, {"calls": 0, "alpha": [float("nan")]}, "alpha"),
        ("nash_mtl", {}, {"calls": 0.5, "alpha": None}, "calls"),
        ("pcgrad", {"seed": 0}, {"generator": [1, 2, 3]}, "generator"),
    ],
)
def test_bad_state_is_rejected(name, opts, state, message):
    with pytest.raises(ValueError, match=message):
        get(name, **opts).load_state_dict(state)


def test_nash_mtl_stored_weights_must_fit():
    agg = get("nash_mtl", update_weights_every=5)
    agg(torch.eye(3, dtype=T64))
    with pytest.raises(ValueError, match="stored weights are for 3 objectives, got 2"):
        agg(torch.eye(2, dtype=T64))
