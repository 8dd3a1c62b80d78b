"""Gradient aggregators: contract, option validation, and properties against dense (parameter-space) computations."""

from __future__ import annotations

import json

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mollm.aggregators import Aggregator, available, get, seeded_options
from mollm.aggregators._qp import _nonneg_pg, _simplex_pg, nonneg_qp, simplex_qp

NAMES = ["linear", "mgda", "ds_mgda", "pcgrad", "cagrad", "upgrad"]
FAMILY = ["gru", "ngdiff", "aligned_mtl", "dualproj", "imtl_g", "nash_mtl"]  # tests/test_aggregators_family.py
PROPS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------------------- helpers
@st.composite
def jacobians(draw, min_m=2, max_m=5, full_rank=False, max_scale_exp=8):
    """A random m×n J (float64) of chosen rank, scaled by 10^e with e in [-8, 8]."""
    m = draw(st.integers(min_m, max_m))
    n = draw(st.integers(m if full_rank else 1, 20))
    rank = min(m, n) if full_rank else draw(st.integers(1, min(m, n)))
    seed = draw(st.integers(0, 2**31 - 1))
    exp = draw(st.floats(-max_scale_exp, max_scale_exp))
    rng = np.random.default_rng(seed)
    j = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    return torch.tensor(j * 10.0**exp, dtype=torch.float64)


@st.composite
def guarded_jacobians(draw, full_rank=False):
    """A J from :func:`jacobians` whose rows after the first are kept, or shrunk to 10^-7 .. 1 of the largest norm
    (across ds_mgda's ``vanish_tol`` 1e-4 and floor 1e-2, with those values and 1/230 drawn often), and unless
    ``full_rank`` possibly turned against the sum of the other rows or against one of them (in their span, so the
    rank can only drop). Row 0 is scaled to the largest norm, so the drawn ratios are exact."""
    j = draw(jacobians(full_rank=full_rank))
    norms = j.norm(dim=1)
    top = float(norms.max())
    j[0] *= top / float(norms[0])
    kinds = ["keep", "shrink"] if full_rank else ["keep", "shrink", "oppose_all", "oppose_one"]
    ratio_exp = st.one_of(st.floats(-7.0, 0.0), st.sampled_from([-4.0, -2.0, -math.log10(230.0)]))
    for i in range(1, j.shape[0]):
        kind = draw(st.sampled_from(kinds))
        if kind == "keep":
            continue
        if kind == "shrink":
            row = j[i].clone()
        elif kind == "oppose_all":
            row = j[i] - j.sum(dim=0)
        else:
            row = -j[draw(st.sampled_from([k for k in range(j.shape[0]) if k != i]))]
        if float(row.norm()) > 0.0:
            j[i] = row * (10.0 ** draw(ratio_exp) * top / float(row.norm()))
    return j


def gram(j: torch.Tensor) -> torch.Tensor:
    return j @ j.T


def well_conditioned(j: torch.Tensor, ratio: float = 1e-2) -> bool:
    s = torch.linalg.svdvals(j)
    return bool(s[-1] > ratio * s[0])


def nonconflict_tol(g: torch.Tensor, c: torch.Tensor, rtol: float = 1e-7) -> float:
    # |(Gc)_i| <= trace(G) * sum|c|: rounding is relative to that.
    return rtol * float(torch.trace(g)) * float(c.abs().sum()) + 1e-300


def ds_mgda_tol(j: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    # Per objective: rounding of (Gc)_i = Σ_k <g_i, g_k> c_k is relative to ‖g_i‖ Σ_k |c_k| ‖g_k‖, so a tiny gradient
    # gets a tiny tolerance; the absolute term covers the mgda solver's ridge (1e-12 of trace(G)).
    norms = j.norm(dim=1)
    return 1e-9 * norms * float((c.abs() * norms).sum()) + 1e-10 * float(norms.square().sum() * c.abs().sum())


def ds_mgda_sets(j: torch.Tensor, vanish_tol: float = 1e-4, max_ratio: float | None = 100.0):
    """Masks (active, floored, ambiguous) by ds_mgda's definitions; ambiguous rows sit within 1e-6 of a threshold,
    where rounding decides."""
    r = j.norm(dim=1) / j.norm(dim=1).max()
    active = r > vanish_tol * (1 + 1e-6)
    floor = 0.0 if max_ratio is None else 1.0 / max_ratio
    floored = active & (r < floor * (1 - 1e-6))
    ambiguous = ((r - vanish_tol).abs() <= 1e-6 * vanish_tol) | ((r - floor).abs() <= 1e-6 * floor)
    return active, floored, ambiguous & (r > 0)


def cos_with_d(j: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d = j.T @ c
    return (j @ d) / (j.norm(dim=1) * d.norm()).clamp_min(1e-300)


# ---------------------------------------------------------------------------------------------------------- contract
def test_registry_lists_all_and_returns_aggregators():
    assert available() == sorted(NAMES + FAMILY)
    for name in NAMES + FAMILY:
        agg = get(name)
        assert isinstance(agg, Aggregator) and agg.name == name


@pytest.mark.parametrize("name", NAMES)
def test_output_dtype_device_shape(name):
    j = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 1.0], [0.0, 0.3, 2.0]])
    c = get(name)(gram(j))
    assert c.dtype == torch.float32 and c.device == j.device and c.shape == (3,)
    c64 = get(name)(gram(j.double()))
    assert c64.dtype == torch.float64
    assert torch.allclose(c.double(), c64, rtol=1e-4, atol=1e-5)


def test_unknown_name_lists_available():
    known = "aligned_mtl, cagrad, ds_mgda, dualproj, gru, imtl_g, linear, mgda, nash_mtl, ngdiff, pcgrad, upgrad"
    with pytest.raises(ValueError, match=f"unknown aggregator 'nope'.*{known}"):
        get("nope")


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("mgda", {"alpha": 1}, "alpha"),
        ("linear", {"wieghts": [1, 1]}, "wieghts"),
        ("linear", {"weights": [1, -1]}, "weights"),
        ("linear", {"weights": [0, 0]}, "weights"),
        ("linear", {"weights": [1, float("nan")]}, "weights"),
        ("linear", {"weights": "1,1"}, "weights"),
        ("pcgrad", {"seed": -1}, "seed"),
        ("pcgrad", {"seed": 1.5}, "seed"),
        ("pcgrad", {"seed": "0"}, "seed"),
        ("cagrad", {"c": 1.0}, "c"),
        ("cagrad", {"c": -0.1}, "c"),
        ("ds_mgda", {"norm": "l2"}, "norm"),
        ("ds_mgda", {"preference": [1.0, 0.0]}, "preference"),
        ("ds_mgda", {"preference": []}, "preference"),
        ("ds_mgda", {"vanish_tol": 1.5}, "vanish_tol"),
        ("ds_mgda", {"max_ratio": 0.5}, "max_ratio"),
        ("ds_mgda", {"rcond": 0.0}, "rcond"),
        ("upgrad", {"c": 0.4}, "c"),
    ],
)
def test_bad_options_name_the_field(name, options, field):
    with pytest.raises(ValueError, match=f"aggregator '{name}'.*option '{field}'"):
        get(name, **options)


def test_option_length_mismatch_is_reported_at_call():
    g = torch.eye(3)
    with pytest.raises(ValueError, match="'weights' has 2 values but there are 3 objectives"):
        get("linear", weights=[1, 2])(g)
    with pytest.raises(ValueError, match="'preference' has 2 values but there are 3 objectives"):
        get("ds_mgda", preference=[1, 2])(g)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.ones(2, 3), "square"),
        (torch.ones(3), "square"),
        (torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), "NaN"),
        (torch.tensor([[1.0, 0.5], [-0.5, 1.0]]), "not symmetric"),
        (torch.tensor([[-1.0, 0.0], [0.0, 1.0]]), "negative diagonal"),
        (torch.eye(2, dtype=torch.int64), "floating-point"),
    ],
)
def test_bad_gramian_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        get("mgda")(bad)


def test_linear_with_weights_is_the_weighted_sum():
    j = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = [0.5, 1.0, 2.0]
    c = get("linear", weights=w)(gram(j))
    assert torch.allclose(j.T @ c, 0.5 * j[0] + j[1] + 2.0 * j[2])
    assert torch.equal(get("linear")(gram(j)), torch.ones(3, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- non-conflict, KKT
@PROPS
@given(jacobians())
def test_nonconflicting_aggregators_have_gc_nonnegative(j):
    g = gram(j)
    for name, opts in [("mgda", {}), ("upgrad", {}), ("ds_mgda", {"max_ratio": None})]:
        c = get(name, **opts)(g)
        assert torch.isfinite(c).all()
        assert (g @ c >= -nonconflict_tol(g, c)).all(), (name, g @ c)


DS_MGDA_OPTIONS = [{}, {"vanish_tol": 0.0}, {"max_ratio": None}, {"max_ratio": 10.0}, {"norm": "max"}, {"norm": "none"}]


@PROPS
@given(guarded_jacobians(), st.sampled_from(DS_MGDA_OPTIONS))
def test_ds_mgda_guarantee_for_active_objectives(j, opts):
    # The documented guarantee: (G c)_i >= 0 for every objective above vanish_tol, floored or not.
    g = gram(j)
    c = get("ds_mgda", **opts)(g)
    assert torch.isfinite(c).all()
    max_ratio = opts.get("max_ratio", 100.0)
    active, _, ambiguous = ds_mgda_sets(j, opts.get("vanish_tol", 1e-4), max_ratio)
    gc = g @ c
    checked = active & ~ambiguous
    assert (gc[checked] >= -ds_mgda_tol(j, c)[checked]).all(), (gc, j.norm(dim=1))
    # Coefficients stay O(max_ratio) (what the floor is for) wherever the gradients' directions are well conditioned.
    jn = j[active] / j[active].norm(dim=1, keepdim=True)
    posed = int(active.sum()) <= j.shape[1] and well_conditioned(jn, 0.1)
    if max_ratio is not None and opts.get("norm") != "none" and posed:
        assert float(c.abs().max()) <= 10.0 * max_ratio


@PROPS
@given(guarded_jacobians(full_rank=True), st.sampled_from(DS_MGDA_OPTIONS))
def test_ds_mgda_strict_when_independent_and_none_floored(j, opts):
    # ... and > 0 for all of them when the active gradients are linearly independent and none is floored.
    active, floored, ambiguous = ds_mgda_sets(j, opts.get("vanish_tol", 1e-4), opts.get("max_ratio", 100.0))
    jn = j[active] / j[active].norm(dim=1, keepdim=True)
    if floored.any() or ambiguous.any() or int(active.sum()) > j.shape[1] or not well_conditioned(jn):
        return
    c = get("ds_mgda", **opts)(gram(j))
    assert (cos_with_d(j, c)[active] > 1e-9).all()


@PROPS
@given(jacobians(full_rank=True))
def test_ds_mgda_strict_descent_and_equal_edge_formula_at_full_rank(j):
    if not well_conditioned(j):
        return
    g = gram(j)
    c = get("ds_mgda")(g)
    assert (cos_with_d(j, c) > 1e-4).all()
    # Hand computation in parameter space: edges of the dual cone are the columns of J⁺ (J e_j = u_j).
    edges = torch.linalg.pinv(j)
    d = (edges / edges.norm(dim=0)).sum(dim=1)
    d = d * j.norm(dim=1).mean() / d.norm()
    norms = j.norm(dim=1)
    if norms.min() >= norms.max() / 100.0:  # the max_ratio floor is inactive
        assert torch.allclose(j.T @ c, d, rtol=1e-6, atol=1e-9 * float(norms.max()))
    # Equal first-order decrease per unit of edge: <g_i, d> ∝ 1/sqrt((G⁻¹)_ii).
    c_raw = get("ds_mgda", norm="none", max_ratio=None)(g)
    expected = 1.0 / torch.sqrt(torch.diagonal(torch.linalg.inv(g)))
    assert torch.allclose(g @ c_raw, expected, rtol=1e-5)


def _mgda_closed_form_2(g: torch.Tensor) -> torch.Tensor:
    den = g[0, 0] + g[1, 1] - 2 * g[0, 1]
    gamma = 0.5 if den <= 0 else float(torch.clamp((g[1, 1] - g[0, 1]) / den, 0.0, 1.0))
    return torch.tensor([gamma, 1.0 - gamma], dtype=g.dtype)


@PROPS
@given(jacobians(max_m=6))
def test_mgda_kkt_and_m2_closed_form(j):
    g = gram(j)
    c = get("mgda")(g)
    tol = 1e-7 * float(torch.trace(g))
    assert (c >= 0).all() and math.isclose(float(c.sum()), 1.0, rel_tol=1e-12)
    gc, value = g @ c, float(c @ g @ c)
    assert (gc >= value - tol).all()  # no vertex improves on the min-norm point
    assert (gc[c > 1e-6] <= value + tol).all()  # complementary slackness on the support
    if g.shape[0] == 2:
        assert (
            torch.allclose(c, _mgda_closed_form_2(g), atol=1e-9) or abs(float(g[0, 0] + g[1, 1] - 2 * g[0, 1])) <= tol
        )
        # The enumeration solver used for m ≥ 3 agrees with the closed form as well.
        gn = (g / torch.trace(g)).numpy()
        w = simplex_qp(2 * (gn + 1e-12 * np.eye(2)))
        assert float(w @ gn @ w) <= float(c @ g @ c) / float(torch.trace(g)) + 1e-9


def test_mgda_matches_dense_min_norm_point():
    rng = np.random.default_rng(1)
    for m, n in [(3, 5), (4, 20), (5, 8)]:
        j = torch.tensor(rng.standard_normal((m, n)))
        c = get("mgda")(gram(j))
        jn = j.numpy()
        res = scipy.optimize.minimize(
            lambda w: float(np.sum((jn.T @ w) ** 2)),
            np.full(m, 1.0 / m),
            bounds=[(0, 1)] * m,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        assert np.allclose((j.T @ c).numpy(), jn.T @ res.x, atol=1e-5)


def test_large_m_uses_projected_gradient_and_agrees_with_enumeration():
    rng = np.random.default_rng(2)
    for m in (3, 5, 8):
        a = rng.standard_normal((m, m + 2))
        q = a @ a.T / np.trace(a @ a.T) + 1e-12 * np.eye(m)
        b = rng.standard_normal(m) * 0.1
        w_enum, w_pg = simplex_qp(2 * q, b), _simplex_pg(2 * q, b)
        assert np.allclose(w_enum, w_pg, atol=1e-6)
        x_enum, x_pg = nonneg_qp(2 * q, b), _nonneg_pg(2 * q, b)
        assert np.allclose(x_enum, x_pg, atol=1e-5)
    # m = 12 goes through the fallback; the KKT conditions still hold.
    j = torch.tensor(rng.standard_normal((12, 30)))
    g = gram(j)
    c = get("mgda")(g)
    value = float(c @ g @ c)
    assert (g @ c >= value - 1e-6 * float(torch.trace(g))).all()


# ------------------------------------------------------------------------------------ permutation and scale symmetry
@PROPS
@given(jacobians(), st.randoms(use_true_random=False))
def test_permutation_equivariance(j, rnd):
    perm = list(range(j.shape[0]))
    rnd.shuffle(perm)
    jp = j[perm]
    scale = float(j.norm(dim=1).max())
    for name in ["linear", "mgda", "ds_mgda", "cagrad", "upgrad"]:
        c, cp = get(name)(gram(j)), get(name)(gram(jp))
        # d is unique even when c is not (rank-deficient G); c itself must permute when G is well conditioned.
        assert torch.allclose(j.T @ c, jp.T @ cp, rtol=1e-5, atol=1e-5 * scale), name
        if j.shape[0] <= j.shape[1] and well_conditioned(j):
            assert torch.allclose(c[perm], cp, rtol=1e-5, atol=1e-7 * float(c.abs().max())), name


@PROPS
@given(jacobians(max_scale_exp=0), st.floats(-4, 4))
def test_direction_invariant_under_scaling(j, exp):
    s = 10.0**exp
    g, gs = gram(j), gram(s * j)
    exact = j.shape[0] <= j.shape[1] and well_conditioned(j)
    for name in NAMES:
        opts = {"seed": 0} if name == "pcgrad" else {}
        c, cs = get(name, **opts)(g), get(name, **opts)(gs)
        # Coefficients are scale-free, so d(s·J) = s·d(J): same direction (for linear too: d scales with s).
        scale = float(j.norm(dim=1).max())
        assert torch.allclose(s * (j.T @ c), (s * j).T @ cs, rtol=1e-5, atol=1e-5 * s * scale), name
        if exact:  # c itself is unique
            assert torch.allclose(c, cs, rtol=1e-6, atol=1e-8 * float(c.abs().max())), name
    if exact:  # the raw dual direction (norm="none") is scale-free: c scales by 1/s
        raw, raw_s = get("ds_mgda", norm="none")(g), get("ds_mgda", norm="none")(gs)
        assert torch.allclose(raw / s, raw_s, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ degenerate inputs
DEGENERATE = {
    "zero": torch.zeros(3, 4, dtype=torch.float64),
    "one_zero": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
    "duplicated": torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64),
    "opposite": torch.tensor([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]], dtype=torch.float64),
    "rank1": torch.tensor([[1.0, 1.0], [2.0, 2.0], [-0.5, -0.5]], dtype=torch.float64),
    "huge": torch.tensor([[1e8, 0.0], [0.0, 1e-8]], dtype=torch.float64),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs_never_nan(name, case):
    j = DEGENERATE[case]
    for dtype in (torch.float64, torch.float32):
        c = get(name)(gram(j).to(dtype))
        assert torch.isfinite(c).all(), (name, case, c)


def test_degenerate_expected_values():
    zero = gram(DEGENERATE["zero"])
    for name in ["mgda", "ds_mgda", "pcgrad", "cagrad", "upgrad"]:
        assert torch.equal(get(name)(zero), torch.zeros(3, dtype=torch.float64))
    opp = DEGENERATE["opposite"]
    for name in ["mgda", "ds_mgda", "upgrad", "pcgrad", "cagrad"]:
        # No common descent direction exists: non-conflicting methods stop; PCGrad/CAGrad cancel out too.
        assert (opp.T @ get(name)(gram(opp))).norm() < 1e-9, name
    dup = DEGENERATE["duplicated"]
    c = get("mgda")(gram(dup))
    assert torch.allclose(c[0], c[1], atol=1e-6)  # symmetric split between identical gradients
    rank1 = DEGENERATE["rank1"]
    assert (rank1.T @ get("mgda")(gram(rank1))).norm() < 1e-9  # 0 is in the hull


# ------------------------------------------------------------------------------------------------- dense references
def _pcgrad_dense(j: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    m = j.shape[0]
    orders = [torch.randperm(m, generator=generator).tolist() for _ in range(m)]
    out = torch.zeros(j.shape[1], dtype=j.dtype)
    for i in range(m):
        v = j[i].clone()
        for k in orders[i]:
            if k == i:
                continue
            dot = v @ j[k]
            if dot < 0:
                v = v - dot / (j[k] @ j[k]) * j[k]
        out += v
    return out


@PROPS
@given(jacobians(), st.integers(0, 1000))
def test_pcgrad_matches_dense_vector_implementation(j, seed):
    agg = get("pcgrad", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    scale = float(j.norm(dim=1).max())
    for _ in range(2):  # two steps: the generator advances identically
        c = agg(gram(j))
        assert torch.allclose(j.T @ c, _pcgrad_dense(j, gen), rtol=1e-6, atol=1e-6 * scale)


def test_pcgrad_hand_example():
    # g1 = (1, 0), g2 = (-1, 1): each loses its projection on the other; no randomness matters for m = 2.
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    d = j.T @ get("pcgrad", seed=0)(gram(j))
    # g1 - (-1/2) g2 = (0.5, 0.5); g2 - (-1) g1 = (0, 1).
    assert torch.allclose(d, torch.tensor([0.5, 1.5], dtype=torch.float64))


def _cagrad_value(jn: np.ndarray, w: np.ndarray, k: float) -> float:
    gbar = jn.mean(axis=0)
    gw = jn.T @ w
    return float(gw @ gbar + k * np.linalg.norm(gw))


@PROPS
@given(jacobians(max_scale_exp=0), st.sampled_from([0.2, 0.4, 0.8]))
def test_cagrad_matches_dense_solution(j, radius):
    m = j.shape[0]
    c = get("cagrad", c=radius)(gram(j))
    jn = j.numpy()
    gbar = jn.mean(axis=0)
    k = radius * float(np.linalg.norm(gbar))
    d = (j.T @ c).numpy()
    if k < 1e-9:
        assert np.allclose(d, gbar, atol=1e-9)
        return
    # Coefficients have the form 1/m + λ w with w on the simplex and ‖d − ḡ‖ = √φ.
    lam_w = c.numpy() - 1.0 / m
    w = lam_w / lam_w.sum()
    assert (lam_w >= -1e-9).all()
    assert math.isclose(float(np.linalg.norm(d - gbar)), k, rel_tol=1e-6)
    # The inner problem's optimum is at least as good as a dense SLSQP solve (as in the authors' code).
    res = scipy.optimize.minimize(
        lambda x: _cagrad_value(jn, x, k),
        np.full(m, 1.0 / m),
        bounds=[(0, 1)] * m,
        constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-12, "maxiter": 500},
    )
    assert _cagrad_value(jn, w, k) <= _cagrad_value(jn, res.x, k) + 1e-7
    # Primal view: d maximises min_i <g_i, d'> over the ball ‖d' − ḡ‖ ≤ √φ.
    rng = np.random.default_rng(0)
    best = float((jn @ d).min())
    for _ in range(200):
        u = rng.standard_normal(jn.shape[1])
        other = gbar + k * u / np.linalg.norm(u)
        assert float((jn @ other).min()) <= best + 1e-7


def test_cagrad_hand_example():
    # Orthogonal unit gradients: by symmetry w = (½, ½), g_w = ḡ, so d = (1 + c) ḡ.
    c = get("cagrad", c=0.4)(torch.eye(2, dtype=torch.float64))
    assert torch.allclose(c, torch.full((2,), 0.7, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(
        get("cagrad", c=0.0)(torch.eye(2, dtype=torch.float64)), torch.full((2,), 0.5, dtype=torch.float64)
    )


def _project_dual_cone(jn: np.ndarray, gi: np.ndarray) -> np.ndarray:
    """Projection of g_i onto {x : J x >= 0}, in the primal space, by an exact active-set method: by the KKT
    conditions x = g_i + Jᵀλ with λ >= 0 minimising ‖Jᵀλ + g_i‖, a non-negative least-squares problem. (An SLSQP
    solve of the primal was the oracle before; it missed by ~1e-5 where the cone is nearly degenerate.)"""
    lam, _ = scipy.optimize.nnls(jn.T, -gi, maxiter=10_000)
    return gi + jn.T @ lam


@settings(max_examples=25, deadline=None)
@given(jacobians(max_scale_exp=0))
def test_upgrad_matches_dense_dual_cone_projections(j):
    jn = j.numpy() / float(j.norm(dim=1).max())
    c = get("upgrad")(torch.tensor(jn @ jn.T))
    dense = np.mean([_project_dual_cone(jn, jn[i]) for i in range(jn.shape[0])], axis=0)
    assert np.allclose(jn.T @ c.numpy(), dense, atol=1e-5)


def test_upgrad_hand_example():
    # g1 = (1, 0), g2 = (-1, 1) conflict (g1·g2 = −1): g1 projects onto {x : x·g2 >= 0} at (½, ½), and g2 onto
    # {x : x·g1 >= 0} at (0, 1); both projections are in the dual cone. Average: (¼, ¾).
    j = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    d = j.T @ get("upgrad")(gram(j))
    assert torch.allclose(d, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-9)


# ------------------------------------------------------------------------------------------------- the ds_mgda guard
def test_ds_mgda_zero_gradient_gets_zero_and_others_descend():
    # Step 0 of unlearning: KL to the reference has an exactly zero gradient.
    j = torch.tensor([[1.0, 0.2, -0.3, 0.0], [-0.4, 1.0, 0.1, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    c = get("ds_mgda")(gram(j))
    assert c[2] == 0.0
    assert (gram(j)[:2] @ c > 0.1).all()
    # Same coefficients as ds_mgda on the two live objectives alone.
    assert torch.allclose(c[:2], get("ds_mgda")(gram(j[:2])) * (2 / 3), rtol=1e-9)  # mean norm over 3 vs 2


def test_ds_mgda_vanishing_gradient_does_not_explode():
    rng = np.random.default_rng(3)
    j = torch.tensor(rng.standard_normal((3, 10)))
    for eps in (1e-3, 1e-6, 1e-9):
        jj = j.clone()
        jj[2] *= -eps  # this sign: the floored dual direction does not make g_3 worse (the other: the next test)
        g = gram(jj)
        unguarded = get("ds_mgda", vanish_tol=0.0, max_ratio=None)(g)
        if eps <= 1e-3:
            assert unguarded.abs().max() > 10.0 / eps**0.5  # what the guard is for (13 → 12,700 in a prototype)
        c = get("ds_mgda")(g)
        soft = get("ds_mgda", vanish_tol=0.0)(g)  # the max_ratio floor alone
        for cc in (c, soft):
            assert torch.isfinite(cc).all()
            assert cc.abs().max() <= 100.0  # coefficients stay O(max_ratio) in mean-norm units
            assert (g[:2] @ cc > 0.1 * float(g[:2].diagonal().min())).all()  # the others still descend
        if eps <= 1e-6:
            assert c[2] == 0.0  # below vanish_tol: excluded from the dual solve
        # A floored objective's share of the direction fades with its gradient.
        assert float(soft[2].abs() * jj[2].norm()) <= 1e3 * eps * float(jj.T.matmul(soft).norm())


def test_ds_mgda_spares_a_floored_opposite_gradient():
    # Issue #11: 5 collinear gradients, the last 230× smaller than the largest and opposite to the rest: above
    # vanish_tol, below the max_ratio floor. The floored dual direction had cosine −1 with it.
    u = torch.tensor(np.random.default_rng(0).standard_normal(16))
    j = torch.tensor([1.0, 0.8, 0.5, 0.3, -1.0 / 230.0], dtype=torch.float64)[:, None] * u
    g = gram(j)
    for opts in ({}, {"norm": "max"}, {"norm": "none"}, {"vanish_tol": 0.0}, {"max_ratio": 10.0}):
        c = get("ds_mgda", **opts)(g)
        assert (g @ c >= -nonconflict_tol(g, c)).all(), (opts, g @ c)
        assert (g @ c >= -ds_mgda_tol(j, c)).all(), (opts, g @ c)
        # 0 is in the gradients' convex hull (Pareto-stationary): the only direction sparing all five is 0.
        assert (j.T @ c).norm() <= 1e-9 * float(j.norm(dim=1).max()), opts
        assert c.abs().max() <= 100.0


def test_ds_mgda_floored_conflicting_gradient_is_projected_not_sacrificed():
    # g_3 is floored (1e-3 of the largest norm) and the floored dual direction would make it worse.
    rng = np.random.default_rng(3)
    j = torch.tensor(rng.standard_normal((3, 10)))
    previous = None
    for eps in np.geomspace(3e-3, 1.2e-4, 25):
        jj = j.clone()
        jj[2] *= eps * float(j[0].norm() / j[2].norm())  # row 0 has the largest norm
        g = gram(jj)
        c = get("ds_mgda")(g)
        gc = g @ c
        assert gc[2] >= -ds_mgda_tol(jj, c)[2], (eps, gc)  # not made worse...
        assert (gc[:2] > 0.1 * float(g[:2].diagonal().min())).all(), (eps, gc)  # ...and the others still descend
        assert c.abs().max() <= 100.0
        d = jj.T @ c
        assert d.norm() > 0.5 * float(jj.norm(dim=1).mean())  # a real step, not a collapse to mgda's
        if previous is not None:  # continuous in G: neighbouring eps (13% apart) give neighbouring directions
            assert (d - previous).norm() <= 0.05 * float(jj[0].norm())
        previous = d
    # The same g_3 in the orientation the floored dual direction already spares: that direction is kept. In parameter
    # space: lift g_3 to the floor by an extra orthogonal coordinate, sum the unit edges of the lifted dual cone.
    jj = j.clone()
    jj[2] *= -1e-3
    c = get("ds_mgda")(gram(jj))
    assert (gram(jj) @ c > 0).all()
    norms = jj.norm(dim=1)
    floor = float(norms.max()) / 100.0
    lift = torch.where(norms < floor, (floor**2 - norms.square()).clamp_min(0.0).sqrt(), 0.0)
    j_eff = torch.cat([jj, torch.diag(lift)], dim=1)
    edges = torch.linalg.pinv(j_eff)
    c_ref = torch.linalg.pinv(j_eff.T) @ (edges / edges.norm(dim=0)).sum(dim=1)
    c_ref = c_ref * norms.mean() / (jj.T @ c_ref).norm()
    assert torch.allclose(c, c_ref, rtol=1e-6)


def test_ds_mgda_preference_and_norm_options():
    j = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    g = gram(j)
    # Orthogonal gradients: edges are the unit gradients, so d = Σ α_j g_j/‖g_j‖, scaled to the reference norm.
    for pref in ([1.0, 1.0, 1.0], [4.0, 1.0, 1.0]):
        c = get("ds_mgda", preference=pref)(g)
        d = j.T @ c
        expected = torch.tensor(pref, dtype=torch.float64)
        assert torch.allclose(d / d.norm(), expected / expected.norm())
        assert math.isclose(float(d.norm()), 7.0 / 3.0, rel_tol=1e-12)
    d_max = j.T @ get("ds_mgda", norm="max")(g)
    assert math.isclose(float(d_max.norm()), 4.0, rel_tol=1e-12)
    d_none = j.T @ get("ds_mgda", norm="none")(g)
    assert torch.allclose(d_none, torch.ones(3, dtype=torch.float64))


def test_pcgrad_state_round_trip_continues_the_same_orders():
    # Three mutually conflicting gradients: the projection order changes the result.
    j = torch.tensor([[1.0, 0.0], [-0.8, 0.6], [-0.3, -0.95]], dtype=torch.float64)
    g = j @ j.T
    straight = get("pcgrad", seed=5)
    outputs = [straight(g) for _ in range(6)]
    assert any(not torch.allclose(outputs[0], o) for o in outputs[1:])  # the order matters here
    first = get("pcgrad", seed=5)
    for _ in range(3):
        first(g)
    resumed = get("pcgrad", seed=5)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # through JSON, as a checkpoint stores it
    for k in range(3, 6):
        torch.testing.assert_close(resumed(g), outputs[k], rtol=0, atol=0)


def test_a_run_seeds_pcgrad_from_its_own_seed_unless_the_config_says_otherwise():
    from mollm.engine.config import load_config
    from mollm.engine.plan import aggregator_options

    def options(aggregator: dict, seed: int) -> dict:
        tree = {"name": "x", "model": "embedded", "seed": seed, "data": {"forget": "tofu:f.json"},
                "objectives": [{"name": "forget", "loss": "ga", "data": "forget"}], "aggregator": aggregator, "steps": 1}
        return aggregator_options(load_config(tree))

    assert options({"name": "pcgrad"}, 7) == {"seed": 7}
    assert options({"name": "pcgrad", "options": {"seed": 3}}, 7) == {"seed": 3}
    assert options({"name": "pcgrad", "options": {"seed": None}}, 7) == {"seed": None}  # asked for fresh randomness
    assert options({"name": "ds_mgda"}, 7) == {}  # no random numbers, no seed option
    assert seeded_options("no_such_aggregator", {"a": 1}, 7) == {"a": 1}  # left for get() to report
    j = torch.tensor([[1.0, 0.0], [-0.8, 0.6], [-0.3, -0.95]], dtype=torch.float64)
    runs = [get("pcgrad", **options({"name": "pcgrad"}, seed)) for seed in (7, 7, 8)]
    outputs = [[agg(j @ j.T) for _ in range(8)] for agg in runs]
    assert all(torch.equal(a, b) for a, b in zip(outputs[0], outputs[1]))  # same run seed: same orders
    assert any(not torch.equal(a, b) for a, b in zip(outputs[0], outputs[2]))


@PROPS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 5), f=st.integers(0, 4), factor=st.floats(1.5, 8.0))
def test_ds_mgda_preference_scales_the_first_order_decrease_ratios_exactly(seed, m, f, factor):
    """What α means: at full rank with no objective floored, (G c)_i = s · α_i / sqrt((G⁺)_ii) with one s > 0, so
    multiplying α_f by k multiplies objective f's first-order decrease relative to every other one by exactly k (its
    share of the total decrease rises). The absolute decrease at a fixed step length need not rise (see the docs)."""
    f = f % m
    rng = np.random.default_rng(seed)
    j = rng.standard_normal((m, m + 3)) * rng.uniform(0.5, 2.0, size=(m, 1))  # norms within 4x: none floored
    g = torch.tensor(j @ j.T)
    base = np.ones(m)
    more = base.copy()
    more[f] *= factor
    d0 = (g @ get("ds_mgda", preference=base.tolist())(g)).numpy()
    d1 = (g @ get("ds_mgda", preference=more.tolist())(g)).numpy()
    assert (d0 > 0).all() and (d1 > 0).all()
    others = [i for i in range(m) if i != f]
    np.testing.assert_allclose((d1[f] / d1[others]) / (d0[f] / d0[others]), factor, rtol=1e-6)
    assert d1[f] / d1.sum() > d0[f] / d0.sum()


@PROPS
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(2, 5), f=st.integers(0, 4), factor=st.floats(1.5, 8.0))
def test_preference_at_a_fixed_step_length_ds_mgda_versus_dualproj(seed, m, f, factor):
    """At a fixed step length (what Adam sees), dualproj's preference is monotone — its direction maximises
    ⟨Σ w_i g_i, d⟩ over unit d in the dual cone, so raising w_f never lowers objective f's decrease (revealed
    preference) — while ds_mgda's is not: for aligned gradients more α_f can mean less decrease of f (example below)."""
    f = f % m
    rng = np.random.default_rng(seed)
    j = rng.standard_normal((m, m + 3))
    g = torch.tensor(j @ j.T)
    base = np.ones(m)
    more = base.copy()
    more[f] *= factor
    unit = []
    for w in (base, more):
        c = get("dualproj", preference=w.tolist())(g)
        length = float(c @ g @ c) ** 0.5
        unit.append(float((g @ c)[f]) / length if length > 0 else 0.0)
    assert unit[1] >= unit[0] - 1e-9 * max(1.0, abs(unit[0]))


def test_ds_mgda_more_preference_can_mean_less_progress_at_a_fixed_length():
    # Two gradients 0.3 rad apart: at α = (1, 1) d lies between them and both decrease by 0.99 (unit norms, unit d);
    # at α = (4, 1) d leans to the forget edge, which is nearly orthogonal to g_1: its decrease falls to 0.39.
    j = torch.tensor([[1.0, 0.0], [math.cos(0.3), math.sin(0.3)]], dtype=torch.float64)
    g = j @ j.T
    even, skewed = (g @ get("ds_mgda", preference=p)(g) for p in ([1.0, 1.0], [4.0, 1.0]))
    assert even[0] == pytest.approx(0.98877, abs=1e-4) and skewed[0] == pytest.approx(0.38643, abs=1e-4)
