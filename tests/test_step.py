"""The multi-objective step against dense computations: separate autograd.grad calls, a dense Gramian, hand stats."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from mollm.aggregators import get as get_aggregator
from mollm.engine.step import MultiObjectiveStep, StepStats, summed_backward, trainable_parameters
from mollm.models.reference import Reference
from mollm.models.tiny import tiny_model
from mollm.objectives import get as get_objective

VOCAB = 128
NAMES = ["forget", "normal", "retain"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matrices: a second intra-op thread only adds spin-waiting on the shared 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> torch.nn.Module:
    return tiny_model(VOCAB, num_layers=2, hidden_size=32, num_heads=4, seed=seed)


def _batch(seed: int, batch: int = 2, length: int = 10) -> dict[str, torch.Tensor]:
    """Random tokens; the second half of each row is the answer (labels), the first half the prompt (-100)."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=gen)
    labels = input_ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def _closures(model, reference=None):
    """uce on a forget batch, nll on a normal batch, nll on a retain batch (all with non-zero gradients)."""
    uce, nll = get_objective("uce", eps=0.5), get_objective("nll")
    b0, b1, b2 = _batch(0), _batch(1), _batch(2)
    return [lambda: uce(model, b0), lambda: nll(model, b1), lambda: nll(model, b2)]


def _dense_jacobian(params, closures) -> torch.Tensor:
    """(m, n) float64 matrix of per-objective gradients from separate autograd.grad calls (unused params -> 0)."""
    rows = []
    for closure in closures:
        grads = torch.autograd.grad(closure(), params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]))
    return torch.stack(rows).double()


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params]).double()


@pytest.mark.parametrize(
    "aggregator", [get_aggregator("linear", weights=[0.5, 1.0, 2.0]), get_aggregator("mgda"), get_aggregator("ds_mgda")]
)
def test_combined_gradient_gramian_and_stats_match_dense(aggregator):
    model = _model()
    params = trainable_parameters(model)
    closures = _closures(model)
    jac = _dense_jacobian(params, closures)
    dense_g = jac @ jac.T

    stats = MultiObjectiveStep(model, aggregator, names=NAMES)(closures)

    assert stats.finite and stats.names == NAMES
    c = torch.tensor(stats.coefficients, dtype=torch.float64)
    # The coefficients are the aggregator's answer on the dense Gramian.
    torch.testing.assert_close(c, aggregator(dense_g).double(), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(_flat_grad(params), jac.T @ c, rtol=1e-4, atol=1e-6)
    norms = dense_g.diagonal().sqrt()
    torch.testing.assert_close(torch.tensor(stats.grad_norms, dtype=torch.float64), norms, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        torch.tensor(stats.cosines, dtype=torch.float64), dense_g / norms.outer(norms), rtol=1e-4, atol=1e-5
    )
    gc = jac @ (jac.T @ c)  # ⟨g_i, d⟩ from the dense vectors
    torch.testing.assert_close(torch.tensor(stats.decrease, dtype=torch.float64), gc, rtol=1e-4, atol=1e-7)
    assert stats.conflict == bool((gc < -1e-6 * norms * gc.new_tensor(stats.direction_norm)).any())
    assert stats.direction_norm == pytest.approx(float((jac.T @ c).norm()), rel=1e-4)
    losses = [float(f().detach()) for f in closures]
    assert stats.losses == pytest.approx(losses, rel=1e-5)
    if aggregator.name in ("mgda", "ds_mgda"):
        assert not stats.conflict and min(stats.decrease) >= -1e-9


def test_gramian_equals_dense_gramian():
    model = _model(1)
    params = trainable_parameters(model)
    closures = _closures(model)
    jac = _dense_jacobian(params, closures)
    seen = {}

    def spy(gramian: torch.Tensor) -> torch.Tensor:
        seen["g"] = gramian.clone()
        return torch.ones(gramian.shape[0], dtype=gramian.dtype)

    MultiObjectiveStep(params, spy)(closures)
    assert seen["g"].dtype == torch.float64
    torch.testing.assert_close(seen["g"], jac @ jac.T, rtol=1e-5, atol=1e-9)


def test_conflict_detected_for_opposite_gradients():
    # GA and NLL on the same batch have exactly opposite gradients; weights (1, 2) give d = g_nll: GA gets worse.
    model = _model()
    b = _batch(3)
    ga, nll = get_objective("ga"), get_objective("nll")
    stats = MultiObjectiveStep(model, get_aggregator("linear", weights=[1.0, 2.0]), names=["ga", "nll"])(
        [lambda: ga(model, b), lambda: nll(model, b)]
    )
    assert stats.cosines[0][1] == pytest.approx(-1.0, abs=1e-5)
    norm = stats.grad_norms[1]
    assert stats.decrease == pytest.approx([-(norm**2), norm**2], rel=1e-4)
    assert stats.conflict
    # MGDA on opposite gradients is Pareto-stationary: c = (1/2, 1/2), d = 0, no conflict, nothing NaN.
    stats = MultiObjectiveStep(model, get_aggregator("mgda"))([lambda: ga(model, b), lambda: nll(model, b)])
    assert stats.coefficients == pytest.approx([0.5, 0.5], abs=1e-6)
    assert stats.direction_norm == pytest.approx(0.0, abs=1e-4 * norm) and not stats.conflict
    assert all(math.isfinite(p.grad.abs().max().item()) for p in trainable_parameters(model))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_linear_step_equals_summed_loss_step(optimizer):
    weights = [0.5, 1.0, 2.0]
    model_a = _model(2)
    model_b = copy.deepcopy(model_a)
    make = {
        "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        # eps 1e-4: Adam's g/|g| would blow float32 rounding on near-zero gradient entries up to a full lr step.
        "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, eps=1e-4),
    }[optimizer]
    opt_a, opt_b = make(model_a), make(model_b)
    step = MultiObjectiveStep(model_a, get_aggregator("linear", weights=weights))
    for _ in range(2):  # two steps: the buffer is reused and the optimizer state carries over
        opt_a.zero_grad()
        assert step(_closures(model_a)).finite
        opt_a.step()
        opt_b.zero_grad()
        assert summed_backward(model_b, _closures(model_b), weights).finite
        opt_b.step()
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=f"parameter {name} differs")
    assert step.buffer_bytes == 3 * sum(p.numel() for p in model_a.parameters()) * 4


def test_lora_parameters_only_and_reference_kl():
    peft = pytest.importorskip("peft")
    base = _model()
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():  # LoRA B starts at 0; make the adapter non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    reference = Reference.from_model(model)  # the base model with the adapter disabled
    assert reference.shares_weights
    uce, kl, nll = get_objective("uce"), get_objective("kl"), get_objective("nll")
    b0, b1, b2 = _batch(0), _batch(1), _batch(2)
    closures = [lambda: uce(model, b0), lambda: kl(model, b1, reference), lambda: nll(model, b2)]
    params = trainable_parameters(model)
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    jac = _dense_jacobian(params, closures)

    stats = MultiObjectiveStep(model, get_aggregator("mgda"), names=NAMES)(closures)

    assert stats.finite and stats.losses[1] > 0  # KL is non-zero because the adapter changes the model
    c = torch.tensor(stats.coefficients, dtype=torch.float64)
    torch.testing.assert_close(_flat_grad(params), jac.T @ c, rtol=1e-4, atol=1e-6)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_nan_loss_leaves_grad_untouched_and_names_the_objective():
    model = _model()
    params = trainable_parameters(model)
    previous = [torch.full_like(p, 7.0) if i % 2 == 0 else None for i, p in enumerate(params)]
    for p, g in zip(params, previous):
        p.grad = g
    nll = get_objective("nll")
    b = _batch(0)
    closures = [lambda: nll(model, b), lambda: nll(model, b) * float("nan"), lambda: nll(model, b)]

    stats = MultiObjectiveStep(model, get_aggregator("mgda"), names=NAMES)(closures)

    assert not stats.finite and stats.bad_objective == "normal" and "loss" in stats.reason
    assert stats.losses[0] == pytest.approx(float(nll(model, b).detach())) and stats.losses[2] is None
    for p, g in zip(params, previous):
        assert p.grad is g
        if g is not None:
            assert torch.equal(g, torch.full_like(p, 7.0))
    out = stats.to_dict()
    json.dumps(out, allow_nan=False)  # strict JSON: the NaN loss became null
    assert out["losses"][1] is None and out["finite"] is False


def test_nan_gradient_with_finite_loss_is_caught():
    model = _model()
    nll = get_objective("nll")
    b = _batch(0)
    w = model.lm_head.weight

    def nan_grad():
        # Value 0 (finite), gradient 0.5 / sqrt(0) * 0 = NaN.
        return nll(model, b) + torch.sqrt((w * 0).sum())

    stats = MultiObjectiveStep(model, get_aggregator("linear"), names=["a", "b"])([lambda: nll(model, b), nan_grad])
    assert math.isfinite(stats.losses[1])
    assert not stats.finite and stats.bad_objective == "b" and "gradient" in stats.reason
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["linear", "mgda", "ds_mgda"])
def test_zero_gradient_objective_gives_no_nan(name):
    # At the first step the model equals the reference: KL is 0 with an exactly zero gradient.
    model = _model()
    reference = Reference.from_model(model)
    uce, kl, nll = get_objective("uce"), get_objective("kl"), get_objective("nll")
    b0, b1, b2 = _batch(0), _batch(1), _batch(2)
    closures = [lambda: uce(model, b0), lambda: kl(model, b1, reference), lambda: nll(model, b2)]

    stats = MultiObjectiveStep(model, get_aggregator(name), names=NAMES)(closures)

    assert stats.finite and stats.losses[1] == pytest.approx(0.0, abs=1e-6)
    assert stats.grad_norms[1] == 0.0
    assert stats.cosines[1] == [0.0, 0.0, 0.0] and stats.cosines[0][1] == 0.0
    values = stats.coefficients + stats.decrease + [stats.direction_norm] + sum(stats.cosines, [])
    assert all(math.isfinite(v) for v in values)
    grads = torch.cat([p.grad.reshape(-1) for p in trainable_parameters(model)])
    assert torch.isfinite(grads).all() and grads.abs().max() > 0


def test_unreached_parameters_get_zero_rows_and_buffer_is_reused():
    model = _model()
    emb = model.get_input_embeddings().weight
    params = trainable_parameters(model)
    b = _batch(0)
    nll = get_objective("nll")
    only_final_norm = lambda: model.model.norm.weight.pow(2).sum()  # noqa: E731  reaches one parameter only
    closures = [lambda: nll(model, b), only_final_norm]
    jac = _dense_jacobian(params, closures)
    step = MultiObjectiveStep(model, get_aggregator("linear"))

    stats = step(closures)

    assert stats.finite
    torch.testing.assert_close(_flat_grad(params), jac.sum(0), rtol=1e-5, atol=1e-7)
    ptr = step._buffer.data_ptr()
    step(closures)
    assert step._buffer.data_ptr() == ptr  # reused, not reallocated
    torch.testing.assert_close(_flat_grad(params), jac.sum(0), rtol=1e-5, atol=1e-7)  # zeroed between steps
    # Freezing the (tied) embedding changes the trainable set: the buffer is rebuilt without it.
    emb.requires_grad_(False)
    emb.grad = None
    step(closures)
    assert emb.grad is None
    assert step.buffer_bytes == 2 * sum(p.numel() for p in model.parameters() if p.requires_grad) * 4


def test_bad_inputs_raise_clear_errors():
    model = _model()
    nll = get_objective("nll")
    b = _batch(0)
    with pytest.raises(ValueError, match="names"):
        MultiObjectiveStep(model, get_aggregator("mgda"), names=["one"])([lambda: nll(model, b)] * 2)
    with pytest.raises(ValueError, match="scalar"):
        MultiObjectiveStep(model, get_aggregator("mgda"))([lambda: torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="'x'.*does not require grad"):
        with torch.no_grad():
            MultiObjectiveStep(model, get_aggregator("mgda"), names=["x"])([lambda: nll(model, b)])
    frozen = _model()
    frozen.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        MultiObjectiveStep(frozen, get_aggregator("mgda"))([lambda: nll(model, b)])


def test_error_inside_an_objective_restores_grad():
    model = _model()
    params = trainable_parameters(model)
    nll = get_objective("nll")
    b = _batch(0)

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        MultiObjectiveStep(model, get_aggregator("mgda"))([lambda: nll(model, b), broken])
    assert all(p.grad is None for p in params)


def test_stats_to_dict_is_json():
    stats = StepStats(names=["a"], losses=[float("inf")], grad_norms=[1.0], seconds=0.5)
    out = json.loads(json.dumps(stats.to_dict(), allow_nan=False))
    assert out["losses"] == [None] and out["grad_norms"] == [1.0] and out["finite"] is True


def test_bfloat16_rows_give_the_float32_step_within_bfloat16_rounding():
    model = _model()
    params = trainable_parameters(model)
    closures = _closures(model)
    exact = MultiObjectiveStep(params, get_aggregator("ds_mgda"))(closures)
    want = _flat_grad(params)
    step = MultiObjectiveStep(params, get_aggregator("ds_mgda"), grad_dtype=torch.bfloat16)
    stats = step(closures)
    assert step._buffer.dtype == torch.bfloat16 and step.buffer_bytes == 3 * sum(p.numel() for p in params) * 2
    assert all(p.grad.dtype == torch.float32 for p in params)  # the optimizer sees the weights' dtype
    # bfloat16 keeps 8 bits of mantissa: ~0.4 % per entry; the float64 Gramian keeps the coefficients close.
    assert stats.coefficients == pytest.approx(exact.coefficients, rel=2e-2, abs=1e-3)
    got = _flat_grad(params)
    assert float((got - want).norm() / want.norm()) < 2e-2


def test_bfloat16_rows_leave_backward_passes_outside_the_step_alone():
    model = _model()
    params = trainable_parameters(model)
    step = MultiObjectiveStep(params, get_aggregator("mgda"), grad_dtype=torch.bfloat16)
    step(_closures(model))
    model.zero_grad(set_to_none=True)
    get_objective("nll")(model, _batch(5)).backward()  # the copy hooks must not swallow this gradient
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_rows_filled_by_hooks_leave_backward_passes_outside_the_step_alone():
    """The rows are filled by post-accumulate hooks (no zeroing pass); a plain backward between steps is untouched."""
    import copy

    model = _model()
    params = trainable_parameters(model)
    step = MultiObjectiveStep(params, get_aggregator("mgda"))
    step(_closures(model))
    twin = copy.deepcopy(model)
    model.zero_grad(set_to_none=True)
    get_objective("nll")(model, _batch(5)).backward()
    get_objective("nll")(twin, _batch(5)).backward()
    for p, q in zip(params, trainable_parameters(twin), strict=True):
        assert p.grad is not None and p.grad.data_ptr() != step._buffer.data_ptr()
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)


def test_a_dropped_step_frees_its_buffer_though_its_hooks_are_on_the_models_parameters():
    import weakref

    model = _model()
    step = MultiObjectiveStep(model, get_aggregator("linear"))
    step(_closures(model))
    buffer = weakref.ref(step._buffer)
    model.zero_grad(set_to_none=True)  # the .grad views of the buffer
    del step
    assert buffer() is None  # the model lives on; the hooks it holds do not keep the step alive
    assert all(not p._post_accumulate_grad_hooks for p in trainable_parameters(model))  # removed with the step
    get_objective("nll")(model, _batch(5)).backward()
    assert all(p.grad is not None for p in trainable_parameters(model))


def test_max_norm_clips_like_clip_grad_norm():
    model = _model()
    params = trainable_parameters(model)
    closures = _closures(model)
    MultiObjectiveStep(params, get_aggregator("mgda"))(closures)
    want = [p.grad.clone() for p in params]
    norm = torch.nn.utils.clip_grad_norm_(params, 0.01)
    step = MultiObjectiveStep(params, get_aggregator("mgda"), max_norm=0.01)
    stats = step(closures)
    assert stats.direction_norm == pytest.approx(float(norm), rel=1e-5) and stats.clip_scale < 1
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, w * (0.01 / (float(norm) + 1e-6)), rtol=1e-4, atol=1e-9)


class _RecordingReduction:
    """A one-process stand-in for the data-parallel reduction that records when each row's reduction starts."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def start_row(self, row: torch.Tensor):
        self.events.append("start row")
        return lambda: self.events.append("wait")

    def mean_(self, values: torch.Tensor) -> None:
        self.events.append("mean losses")

    def sum_gramian_(self, gramian: torch.Tensor) -> None:
        self.events.append("sum gramian")


def test_each_row_reduction_starts_right_after_its_backward_before_the_next_forward():
    model = _model()
    events: list[str] = []
    closures = [(lambda c=c, i=i: (events.append(f"forward {i}"), c())[1]) for i, c in enumerate(_closures(model))]
    MultiObjectiveStep(model, get_aggregator("mgda"), reduction=_RecordingReduction(events))(closures)
    forwards = [e for e in events if e.startswith(("forward", "start"))]
    assert [e.split()[0] for e in forwards] == ["forward", "start", "forward", "start", "forward", "start"]
    # Every wait comes after the last backward and before the Gramian is summed.
    assert events[-5:] == ["wait", "wait", "wait", "mean losses", "sum gramian"]
