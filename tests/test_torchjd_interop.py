"""TorchJD weightings as mollm aggregators: ``torchjd:NAME`` in configs, ``from_torchjd(w)``, and the errors."""

from __future__ import annotations

import sys

import pytest
import torch

from mollm.aggregators import TorchJD, available, from_torchjd, get
from mollm.aggregators.base import AGGREGATORS
from mollm.aggregators.torchjd import TorchJDMissingError

NEEDS = "torchjd is not installed (pip install mollm[torchjd])"


def _gram(m: int = 3, n: int = 7, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    j = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (j @ j.T).to(dtype)


def test_torchjd_names_are_resolved_not_listed():
    pytest.importorskip("torchjd", reason=NEEDS)
    assert not any(name.startswith("torchjd:") for name in available())
    assert AGGREGATORS.check("torchjd:UPGradWeighting") == []
    assert AGGREGATORS.check("mgda") == []  # plain names are untouched


def test_get_builds_the_weighting_with_its_options_and_keeps_our_dtype_and_device():
    aggregation = pytest.importorskip("torchjd.aggregation", reason=NEEDS)
    g = _gram()
    agg = get("torchjd:UPGradWeighting", pref_vector=[0.5, 0.25, 0.25])
    assert isinstance(agg, TorchJD) and agg.name == "torchjd:UPGradWeighting"
    assert isinstance(agg.weighting, aggregation.UPGradWeighting)
    want = aggregation.UPGradWeighting(pref_vector=torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64))(g)
    torch.testing.assert_close(agg(g), want, rtol=0, atol=0)
    c32 = agg(g.float())
    assert c32.dtype == torch.float32 and c32.device == g.device and c32.shape == (3,)
    torch.testing.assert_close(c32.double(), want, rtol=1e-5, atol=1e-6)
    cagrad = get("torchjd:CAGradWeighting", c=0.4)
    torch.testing.assert_close(cagrad(g), aggregation.CAGradWeighting(c=0.4)(g), rtol=1e-6, atol=1e-8)
    # Matrix weightings that read only the number of rows are served too.
    torch.testing.assert_close(get("torchjd:MeanWeighting")(g), torch.full((3,), 1 / 3, dtype=torch.float64))


def test_config_check_reports_every_problem_before_anything_runs():
    pytest.importorskip("torchjd", reason=NEEDS)
    check = AGGREGATORS.check
    (p,) = check("torchjd:UPGradWeighting", {"pref": [1, 1]})
    assert "option 'pref': unknown option (its options: pref_vector, projector)" in p
    (p,) = check("torchjd:CAGradWeighting", {})
    assert p == "aggregator 'torchjd:CAGradWeighting': option 'c': required"
    (p,) = check("torchjd:CAGradWeighting", {"c": -1.0})  # the constructor's own check, at config time
    assert "TorchJD's CAGradWeighting refused these options: c must be non-negative" in p
    (p,) = check("torchjd:AlignedMTLWeighting", {"scale_mode": "max"})
    assert "option 'scale_mode': Input should be 'min', 'median' or 'rmse'" in p
    (p,) = check("torchjd:UPGrad")
    assert "TorchJD 0.1" in p and "no weighting 'UPGrad'; did you mean 'torchjd:UPGradWeighting'?" in p
    assert "IMTLGWeighting" in p  # the weightings it has are listed
    (p,) = check("torchjd:ExcessMTLWeighting")
    assert "reads the Jacobian matrix itself" in p and "only the Gramian" in p
    (p,) = check("nope")
    assert p.startswith("unknown aggregator 'nope'; known: ") and p.endswith(", torchjd:NAME")


def test_from_torchjd_wraps_an_instance_and_refuses_what_cannot_work():
    aggregation = pytest.importorskip("torchjd.aggregation", reason=NEEDS)
    from torchjd.linalg import PSDMatrix, QuadprogProjector

    g = _gram()
    w = aggregation.UPGradWeighting(projector=QuadprogProjector(reg_eps=1e-8))
    agg = from_torchjd(w)
    assert agg.name == "torchjd:UPGradWeighting" and agg.weighting is w
    torch.testing.assert_close(agg(g), w(g))
    assert repr(agg).startswith("TorchJD(UPGradWeighting(") and "\n" not in repr(agg)
    # A generic wrapper takes a Gramian when what it wraps does; its state is reset through ours.
    smoothed = from_torchjd(aggregation.CRMOGMWeighting(aggregation.UPGradWeighting(), alpha=0.5))
    first = smoothed(g)
    second = smoothed(_gram(seed=1))
    smoothed.reset()
    torch.testing.assert_close(smoothed(g), first)
    assert not torch.allclose(first, second)
    with pytest.raises(TypeError, match="a TorchJD Aggregator, which takes the Jacobian; pass its Weighting"):
        from_torchjd(aggregation.UPGrad())
    with pytest.raises(TypeError, match="MoDoWeighting reads the Jacobian matrix itself"):
        from_torchjd(aggregation.MoDoWeighting())
    with pytest.raises(TypeError, match="expected a torchjd.aggregation.Weighting, got int"):
        from_torchjd(3)

    class Untyped(aggregation.Weighting):  # not declared Weighting[PSDMatrix]: we cannot tell what it reads
        def forward(self, stat):
            return torch.ones(stat.shape[0])

    with pytest.raises(TypeError, match=r"must subclass Weighting\[PSDMatrix\]"):
        from_torchjd(Untyped())

    class NaNs(aggregation.Weighting[PSDMatrix]):
        def forward(self, gramian):
            return torch.full((gramian.shape[0],), float("nan"), dtype=gramian.dtype)

    with pytest.raises(FloatingPointError, match="aggregator 'torchjd:NaNs' produced non-finite coefficients"):
        from_torchjd(NaNs())(g)


def test_a_call_time_refusal_names_the_aggregator():
    pytest.importorskip("torchjd", reason=NEEDS)
    agg = get("torchjd:UPGradWeighting", pref_vector=[0.5, 0.5])  # two weights, three objectives
    with pytest.raises(ValueError, match=r"aggregator 'torchjd:UPGradWeighting' on a 3×3 Gramian: .*2"):
        agg(_gram())


def test_a_torchjd_aggregator_drives_a_step():
    aggregation = pytest.importorskip("torchjd.aggregation", reason=NEEDS)
    from mollm.engine.step import MultiObjectiveStep, trainable_parameters
    from mollm.models.tiny import tiny_model
    from mollm.objectives import get as get_objective

    model = tiny_model(64, num_layers=1, hidden_size=16, num_heads=2, seed=0)
    params = trainable_parameters(model)
    nll = get_objective("nll")
    batches = []
    for seed in range(2):
        ids = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(seed))
        labels = ids.clone()
        labels[:, :4] = -100
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    closures = [lambda b=b: nll(model, b) for b in batches]
    rows = []
    for f in closures:
        grads = torch.autograd.grad(f(), params, allow_unused=True)
        rows.append(
            torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1) for p, gr in zip(params, grads)])
        )
    jac = torch.stack(rows).double()
    stats = MultiObjectiveStep(model, get("torchjd:UPGradWeighting"), names=["a", "b"])(closures)
    assert stats.finite
    want = aggregation.UPGradWeighting()(jac @ jac.T)
    torch.testing.assert_close(torch.tensor(stats.coefficients, dtype=torch.float64), want, rtol=1e-4, atol=1e-8)


def test_without_torchjd_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchjd", None)  # import torchjd now raises ImportError
    monkeypatch.setitem(sys.modules, "torchjd.aggregation", None)
    with pytest.raises(
        TorchJDMissingError,
        match=r"aggregator 'torchjd:UPGradWeighting' needs TorchJD.*"
        r"pip install mollm\[torchjd\]",
    ):
        get("torchjd:UPGradWeighting")
    assert issubclass(TorchJDMissingError, ImportError) and issubclass(TorchJDMissingError, ValueError)
    (p,) = AGGREGATORS.check("torchjd:UPGradWeighting")
    assert "pip install mollm[torchjd]" in p
    assert AGGREGATORS.check("upgrad") == [] and "upgrad" in available()  # mollm's own are unaffected
    with pytest.raises(ImportError, match=r"pip install mollm\[torchjd\]"):
        from_torchjd(object())


def test_a_run_config_names_a_torchjd_aggregator(tmp_path, tokenizer):
    pytest.importorskip("torchjd", reason=NEEDS)
    from mollm.engine.config import ConfigError, load_config
    from mollm.models.tiny import tiny_model
    from mollm.runs import run

    facts = "n_people=6,seed=1,forget_fraction=0.34"
    tree = {
        "name": "t",
        "output_dir": str(tmp_path / "{name}"),
        "max_length": 48,
        "data": {"forget": f"facts:forget#{facts}", "retain": f"facts:retain#{facts}"},
        "objectives": [
            {"name": "forget", "loss": "ga", "data": "forget", "batch_size": 2},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
        ],
        "aggregator": {"name": "torchjd:CAGradWeighting", "options": {}},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "steps": 2,
        "evaluation": {"before": False, "after": False},
    }
    with pytest.raises(ConfigError, match=r"aggregator: aggregator 'torchjd:CAGradWeighting': option 'c': required"):
        run(load_config(tree), model=tiny_model(), tokenizer=tokenizer, progress=False)
    assert not (tmp_path / "t").exists()
    tree["aggregator"] = {"name": "torchjd:UPGradWeighting", "options": {"pref_vector": [0.5, 0.5]}}
    result = run(load_config(tree), model=tiny_model(), tokenizer=tokenizer, progress=False)
    assert result.status == "completed" and result.steps == 2
