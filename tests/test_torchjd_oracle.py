"""TorchJD as the test oracle: where it implements the same method, our coefficients (or directions) match its own.

Inputs are seeded random Jacobians J (m×n, several m and ranks, scaled by 10^e) and G = JJᵀ. A direction is compared
through the Gramian only: ‖Jᵀ(c₁ − c₂)‖ / ‖J‖_F = sqrt((c₁−c₂)ᵀG(c₁−c₂) / trace G), which is invariant to the scale of
J and insensitive to coefficients that differ only in the null space of G (where a rank-deficient method's
coefficients are not unique). Where TorchJD's definition or defaults differ from ours, the test states the relation
it checks and why. TorchJD's own solvers are approximate (Frank-Wolfe for MGDA, CLARABEL for CAGrad, ECOS for
Nash-MTL), so those comparisons allow for the solver's accuracy, not ours.

``dualproj``, ``aligned_mtl``, ``imtl_g`` and ``nash_mtl`` are compared once mollm registers them; until then their
tests are skipped with that reason.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("torchjd", reason="torchjd is not installed (pip install mollm[torchjd]); it is the test oracle")

from torchjd.aggregation import (
    AlignedMTLWeighting,
    CAGradWeighting,
    DualProjWeighting,
    IMTLGWeighting,
    MGDAWeighting,
    NashMTL,
    PCGradWeighting,
    UPGradWeighting,
)
from torchjd.linalg import QuadprogProjector

from mollm.aggregators import available, get

MS = [2, 3, 5]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # m×m matrices: a second intra-op thread only adds spin-waiting on a shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------- helpers
def jacobian(seed: int, m: int, n: int, rank: int) -> torch.Tensor:
    """A seeded m×n float64 J of the given rank, scaled by 10^e with e in [-4, 4]."""
    rng = np.random.default_rng(seed)
    j = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))
    return torch.tensor(j * 10.0 ** rng.uniform(-4.0, 4.0), dtype=torch.float64)


def cases(m: int, seeds: int = 12, full_rank: bool = False) -> list[tuple[int, torch.Tensor]]:
    """(seed, J) for ``seeds`` seeds at each shape: n = 20 at full rank, and unless ``full_rank`` n = 20 at rank
    m − 1 and n = 3 at rank 1 (parallel and opposite gradients)."""
    shapes = [(20, m)] if full_rank else [(20, m), (20, m - 1), (3, 1)]
    return [
        (1000 * m + 100 * k + s, jacobian(1000 * m + 100 * k + s, m, n, r))
        for k, (n, r) in enumerate(shapes)
        for s in range(seeds)
    ]


def balanced(g: torch.Tensor, ratio: float = 1e-2) -> bool:
    """Every squared gradient norm is at least ``ratio`` of the largest (TorchJD's 1e-4 ridge is then negligible)."""
    d = torch.diagonal(g)
    return bool(d.min() >= ratio * d.max())


def conditioned(j: torch.Tensor, ratio: float = 1e-2) -> bool:
    s = torch.linalg.svdvals(j)
    return bool(s[-1] >= ratio * s[0])


def direction_error(g: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> float:
    """‖Jᵀ(c₁ − c₂)‖ / ‖J‖_F from G alone."""
    d = c1.double() - c2.double()
    return math.sqrt(max(float(d @ g @ d), 0.0) / float(torch.trace(g)))


def coefficient_error(c1: torch.Tensor, c2: torch.Tensor) -> float:
    return float((c1.double() - c2.double()).abs().max() / c1.double().abs().max().clamp_min(1e-300))


def mollm(name: str, **options):
    """Our aggregator ``name``; skipped (with that reason) until it is registered."""
    if name not in available():
        pytest.skip(f"mollm aggregator '{name}' not registered yet")
    return get(name, **options)


def worst(pairs):
    """The largest error and where it occurred, for an assertion message."""
    return max(pairs, key=lambda t: t[0])


# Exact dual-cone projections: TorchJD's QuadprogProjector without its two safeguards. By default it treats G as zero
# when trace(G) < norm_eps = 1e-4 (an absolute threshold: ‖J‖_F < 0.01), and adds reg_eps = 1e-4 · I to the
# trace-normalised G, which moves the answer when a gradient's squared norm is within a few orders of 1e-4 of trace(G)
# and conflicts with the others. Ours is scale-invariant and adds 1e-12 · I.
def exact_projector() -> QuadprogProjector:
    return QuadprogProjector(norm_eps=0.0, reg_eps=1e-12)


def unit(j: torch.Tensor) -> torch.Tensor:
    """J scaled to ‖J‖_F = 1, above TorchJD's absolute norm_eps (compared at its defaults)."""
    return j / j.norm()


# ------------------------------------------------------------------------------------------------------------ UPGrad
@pytest.mark.parametrize("m", MS)
def test_upgrad_matches_torchjd_exact_projection(m):
    # Same definition (mean of the dual-cone projections of each g_i, pref_vector 1/m): the directions agree to
    # rounding on every rank, and at full rank (where the projection weights are unique) so do the coefficients.
    ours, theirs = get("upgrad"), UPGradWeighting(projector=exact_projector())
    errs, coef = [], []
    for seed, j in cases(m):
        g = j @ j.T
        c, t = ours(g), theirs(g)
        errs.append((direction_error(g, c, t), seed))
        if j.shape[1] >= m and conditioned(j):
            coef.append((coefficient_error(c, t), seed))
    assert worst(errs)[0] < 1e-8, worst(errs)
    assert worst(coef)[0] < 1e-6, worst(coef)


@pytest.mark.parametrize("m", MS)
def test_upgrad_matches_torchjd_defaults_on_well_conditioned_gradients(m):
    # TorchJD's default ridge (1e-4 of trace G) shifts its projections by ~1e-3 of ‖J‖_F when the gradients are
    # well conditioned and of comparable norms. Near rank deficiency, or with a small gradient conflicting with a large
    # one, it departs further (up to 0.36 ‖J‖_F in our sweeps; test_upgrad_matches_torchjd_exact_projection checks
    # those inputs at reg_eps = 1e-12).
    ours, theirs = get("upgrad"), UPGradWeighting()
    errs = [
        (direction_error(g, ours(g), theirs(g)), seed)
        for seed, j in cases(m, seeds=20, full_rank=True)
        for g in [unit(j) @ unit(j).T]
        if balanced(g) and conditioned(j, 0.1)
    ]
    assert errs and worst(errs)[0] < 5e-3, worst(errs)


@pytest.mark.parametrize("name", ["upgrad", "cagrad"])
def test_small_gradients_torchjd_defaults_give_the_unprojected_mean_ours_are_scale_invariant(name):
    # A documented difference: TorchJD's defaults normalise G by its trace only when trace(G) >= norm_eps = 1e-4 and
    # use zeros otherwise, so with ‖J‖_F < 0.01 its UPGrad returns the preference weights (the plain mean gradient,
    # which conflicts here) and its CAGrad returns zero weights. Ours give the same answer at every scale.
    j = torch.tensor([[1.0, 0.0], [-2.0, 0.5]], dtype=torch.float64)  # the mean gradient conflicts with g1
    g = j @ j.T
    small = 1e-3 * j  # ‖J‖_F ≈ 2.3e-3
    g_small = small @ small.T
    ours = get(name)
    torch.testing.assert_close(ours(g_small), ours(g), rtol=1e-9, atol=0)
    if name == "upgrad":
        theirs = UPGradWeighting()
        assert torch.equal(theirs(g_small), torch.full((2,), 0.5, dtype=torch.float64))
        assert float((g @ theirs(g_small)).min()) < 0.0 <= float((g @ ours(g)).min())
    else:
        theirs = CAGradWeighting(c=0.4)
        assert torch.equal(theirs(g_small), torch.zeros(2, dtype=torch.float64))
    assert direction_error(g, ours(g), theirs(g)) < 5e-3  # at ‖J‖_F ≈ 2.3 they agree


# -------------------------------------------------------------------------------------------------------------- MGDA
@pytest.mark.parametrize("m", MS)
def test_mgda_is_the_min_norm_point_torchjd_frank_wolfe_approaches(m):
    # Same problem (min ‖Jᵀc‖ over the simplex); TorchJD solves it approximately (Frank-Wolfe, epsilon 1e-3, 100
    # iterations: directions within 2e-2 ‖J‖_F of the exact one in our sweep), ours exactly. For the min-norm point
    # d* of a convex set and any point d of it, ‖d − d*‖² ≤ ‖d‖² − ‖d*‖², so TorchJD's answer must be no shorter than
    # ours and within that distance of it. With more Frank-Wolfe iterations the directions agree in value too.
    ours, loose, tight = get("mgda"), MGDAWeighting(), MGDAWeighting(epsilon=1e-9, max_iters=500)
    gaps, errs = [], []
    for seed, j in cases(m):
        g = j @ j.T
        scale = float(torch.trace(g))
        c = ours(g)
        norm2 = float(c @ g @ c) / scale
        for t in (loose(g), tight(g)):
            assert float(t.sum()) == pytest.approx(1.0) and float(t.min()) >= 0.0
            t_norm2 = float(t @ g @ t) / scale
            gaps.append((norm2 - t_norm2, seed))  # ours is never longer
            gaps.append((direction_error(g, c, t) ** 2 - (t_norm2 - norm2), seed))
        errs.append((direction_error(g, c, t), seed))  # t: the tight solve
    assert worst(gaps)[0] < 1e-9, worst(gaps)
    assert worst(errs)[0] < 1e-2, worst(errs)


# ------------------------------------------------------------------------------------------------------------ PCGrad
@pytest.mark.parametrize("m", [2, 3, 5, 7])
def test_pcgrad_matches_torchjd_with_the_same_random_orders(m):
    # Same variant (each g_i projected, in a fresh random order of the j ≠ i, off every g_j it conflicts with; the
    # projections summed). Both draw one torch.randperm(m) per objective per call, ours from a torch.Generator seeded
    # with `seed`, TorchJD's from torch's global generator: seeded alike they use the same orders, so every call of
    # a run agrees to rounding, not only in expectation.
    errs = []
    for seed, j in cases(m, seeds=6):
        g = j @ j.T
        ours = get("pcgrad", seed=seed)
        theirs = PCGradWeighting()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for _ in range(3):
                errs.append((coefficient_error(ours(g), theirs(g)), seed))
    assert worst(errs)[0] < 1e-10, worst(errs)


# ------------------------------------------------------------------------------------------------------------ CAGrad
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("c", [0.0, 0.2, 0.4, 0.8])
def test_cagrad_matches_torchjd(m, c):
    # Same definition (w minimises g_wᵀḡ + c‖ḡ‖‖g_w‖ on the simplex, d = ḡ + c‖ḡ‖ g_w / ‖g_w‖; no rescaling of d).
    # TorchJD solves the inner problem with CLARABEL (tolerance ~1e-8 on the objective, which leaves ~1e-4 on w).
    # Compared at ‖J‖_F = 1: below ‖J‖_F = 0.01 TorchJD returns zero weights (see the small-gradients test).
    ours, theirs = get("cagrad", c=c), CAGradWeighting(c=c)
    errs = []
    for seed, j in cases(m):
        g = unit(j) @ unit(j).T
        errs.append((direction_error(g, ours(g), theirs(g)), seed))
    assert worst(errs)[0] < 2e-4, worst(errs)


def test_cagrad_at_a_pareto_stationary_point_torchjd_stops_and_ours_keeps_the_mean_gradient():
    # A documented difference. g1 = −g2, g3 orthogonal: 0 lies in the gradients' convex hull and the best worst-case
    # decrease in the ball around ḡ is 0. TorchJD returns zero weights when ‖g_w‖ is below norm_eps ("approximately
    # on the Pareto front"), a direction outside that ball for c < 1; ours stays in the ball, at ḡ, which attains
    # the optimal worst-case decrease 0 and still decreases objective 3.
    j = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    g = j @ j.T
    c = 0.4
    theirs = CAGradWeighting(c=c)(g)
    assert torch.equal(theirs, torch.zeros(3, dtype=torch.float64))
    ours = get("cagrad", c=c)(g)
    d, mean = j.T @ ours, j.mean(dim=0)
    assert float((d - mean).norm()) <= c * float(mean.norm()) + 1e-9
    decrease = j @ d
    assert float(decrease.min()) >= -1e-9 and float(decrease[2]) > 0.3


# ---------------------------------------------------------------------------------------- pending: merged from aggs
@pytest.mark.parametrize("m", MS)
def test_dualproj_matches_torchjd_exact_projection(m):
    # Same definition (the mean gradient projected onto the dual cone, pref_vector 1/m); see UPGrad for the ridge.
    ours, theirs = mollm("dualproj"), DualProjWeighting(projector=exact_projector())
    defaults = DualProjWeighting()
    errs, coef, loose = [], [], []
    for seed, j in cases(m):
        g = j @ j.T
        c, t = ours(g), theirs(g)
        errs.append((direction_error(g, c, t), seed))
        if j.shape[1] >= m and conditioned(j):
            coef.append((coefficient_error(c, t), seed))
        if j.shape[1] >= m and conditioned(j, 0.1) and balanced(g):  # TorchJD's defaults: see UPGrad
            gu = unit(j) @ unit(j).T
            loose.append((direction_error(gu, ours(gu), defaults(gu)), seed))
    assert worst(errs)[0] < 1e-8, worst(errs)
    assert worst(coef)[0] < 1e-6, worst(coef)
    assert worst(loose)[0] < 5e-3, worst(loose)


@pytest.mark.parametrize("m", MS)
def test_aligned_mtl_matches_torchjd(m):
    # Same definition as TorchJD's defaults: c = B·(1/m) with B = sqrt(λ_min) V Λ^(-1/2) Vᵀ over the eigenpairs of G
    # above its numerical rank threshold (scale_mode "min", λ_min the smallest kept eigenvalue). B is unique, so the
    # coefficients are compared at every rank whose threshold is clear-cut (exactly rank-deficient inputs).
    ours, theirs = mollm("aligned_mtl"), AlignedMTLWeighting()
    errs = []
    for seed, j in cases(m):
        g = j @ j.T
        c, t = ours(g), theirs(g)
        errs.append((coefficient_error(c, t), seed))
    assert worst(errs)[0] < 1e-6, worst(errs)


@pytest.mark.parametrize("m", MS)
def test_imtl_g_matches_torchjd(m):
    # Same definition at full rank: c ∝ G⁻¹ diag(G)^(1/2), normalised to sum 1, so that d has equal projections on
    # every unit gradient; the coefficients are unique and must agree. At lower rank the definitions part on purpose:
    # TorchJD takes the pseudo-inverse, which can make an objective worse (e.g. opposite gradients); ours solves the
    # paper's conditions as a bordered least-squares system (d = 0 there), so for two objectives it never conflicts.
    ours, theirs = mollm("imtl_g"), IMTLGWeighting()
    coef = []
    for seed, j in cases(m):
        g = j @ j.T
        c, t = ours(g), theirs(g)
        if j.shape[1] >= m and conditioned(j):
            coef.append((coefficient_error(c, t), seed))
        elif m == 2:
            assert float((g @ c).min()) >= -1e-9 * float(g.diagonal().max()) * float(c.abs().sum()), seed
    assert worst(coef)[0] < 1e-8, worst(coef)


@pytest.mark.parametrize("m", MS)
def test_nash_mtl_matches_torchjd_aggregator_on_the_jacobian(m):
    # TorchJD has Nash-MTL only as an Aggregator on J (stateful: a fresh one per input; max_norm=0, no clipping). Its
    # weights α solve α_i (Gα)_i = 1 for the raw G (the ‖G‖_F normalisation cancels in its constraints); ours may
    # solve at another scale of G, and since the solution for sG is α/√s only the ray of α is the method's: unit
    # directions are compared. At full rank the solution is unique. TorchJD's sequence of ECOS problems does not
    # always converge (in our sweep 4 of 35 inputs end with some α_i (Gα)_i off 1 by 0.05 to 1, ECOS warning
    # "Solution may be inaccurate"); where it does, the directions must agree, and where it does not, ours must still
    # satisfy the defining equation (up to its scale).
    ours = mollm("nash_mtl")
    errs, resid = [], []
    converged = total = 0
    for seed, j in cases(m, full_rank=True):
        if not conditioned(j):
            continue
        total += 1
        g = j @ j.T
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cvxpy's DPP and accuracy warnings
            d_theirs = NashMTL(n_tasks=m, max_norm=0.0, optim_niter=100)(j)
        alpha = torch.linalg.solve(g, j @ d_theirs)  # J has full row rank: d = Jᵀα determines α
        c = ours(g)
        p = c * (g @ c)
        resid.append((float((p / p.mean() - 1.0).abs().max()), seed))
        if float((alpha * (g @ alpha) - 1.0).abs().max()) < 1e-3:
            converged += 1
            d_ours = j.T @ c
            errs.append((float((d_ours / d_ours.norm() - d_theirs / d_theirs.norm()).norm()), seed))
    assert converged >= 0.75 * total, f"TorchJD's Nash-MTL converged on {converged} of {total} inputs only"
    assert worst(errs)[0] < 1e-3, worst(errs)
    # Ours keeps a ridge of 1e-8·‖G‖_F (no exact solution exists at Pareto-stationary gradients): α_i (Gα)_i is then
    # constant up to ε α_i², a relative 1e-5 on the worst-conditioned inputs.
    assert worst(resid)[0] < 1e-4, worst(resid)
