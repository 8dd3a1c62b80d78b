"""Unlearning objectives: each loss against a hand computation, masking, gradient bounds, data transforms, registry."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mollm.data.records import QARecord
from mollm.models.reference import Reference
from mollm.models.tiny import tiny_model
from mollm.objectives import (
    DEFAULT_REFUSALS,
    Objective,
    available,
    get,
    prepare_records,
    register,
    steering_vector,
)
from mollm.objectives.registry import OBJECTIVES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOGIT_OBJECTIVES = ["ga", "uce", "npo", "simnpo", "wga", "tnpo", "wtnpo", "nll", "idk", "mismatch", "kl"]
V = 5


class FakeLM(torch.nn.Module):
    """A 'model' whose outputs are fixed tensors (parameters, so gradients w.r.t. them can be read)."""

    def __init__(self, logits: torch.Tensor, hidden: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_logits = torch.nn.Parameter(logits.clone())
        self.hidden = None if hidden is None else torch.nn.Parameter(hidden.clone())
        self.config = SimpleNamespace(num_hidden_layers=0 if hidden is None else hidden.shape[0] - 1)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        states = tuple(self.hidden) if (output_hidden_states and self.hidden is not None) else None
        return SimpleNamespace(logits=self.out_logits, hidden_states=states)


def _batch() -> dict[str, torch.Tensor]:
    # Row 0: prompt of 2 tokens, 3 answer tokens. Row 1: prompt 1 token, 2 answer tokens, then 2 padding tokens.
    labels = torch.tensor([[-100, -100, 2, 1, 3], [-100, 0, 4, -100, -100]])
    input_ids = labels.clamp_min(0)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 5, V, generator=torch.Generator().manual_seed(seed)) * 2


def _hand_answer_positions(labels: torch.Tensor) -> list[list[tuple[int, int]]]:
    """(position t of the logits, target token) for every answer token, per row: logits[t] scores labels[t+1]."""
    rows = []
    for row in labels.tolist():
        rows.append([(t, row[t + 1]) for t in range(len(row) - 1) if row[t + 1] != -100])
    return rows


def _softmax(vec: list[float]) -> list[float]:
    m = max(vec)
    e = [math.exp(v - m) for v in vec]
    s = sum(e)
    return [x / s for x in e]


def _hand_probs(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    out = []
    for b, positions in enumerate(_hand_answer_positions(labels)):
        out.append([_softmax(logits[b, t].tolist())[y] for t, y in positions])
    return out


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand_loss(name: str, opts: dict, logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Each formula of objectives.md written out per sample in plain Python, then averaged over the batch."""
    p_rows = _hand_probs(logits, labels)
    r_rows = _hand_probs(ref_logits, labels)
    per_sample = []
    for b, (ps, rs) in enumerate(zip(p_rows, r_rows)):
        T = len(ps)
        nll = -sum(math.log(p) for p in ps)
        nll_ref = -sum(math.log(r) for r in rs)
        if name == "ga":
            v = -nll / T
        elif name in ("nll", "idk", "mismatch"):
            v = nll / T
        elif name == "uce":
            v = sum(-math.log(1 - (1 - opts["eps"]) * p) for p in ps) / T
        elif name == "npo":
            beta = opts["beta"]
            v = -(2 / beta) * math.log(_sigmoid(beta * (nll - nll_ref)))
        elif name == "simnpo":
            beta, delta = opts["beta"], opts["delta"]
            v = -(2 / beta) * math.log(_sigmoid(beta * (nll / T - delta)))
        elif name == "wga":
            v = sum(p ** opts["alpha"] * math.log(p) for p in ps) / T
        elif name == "tnpo":
            be = opts["beta"]
            v = sum(2 * p**be / (p**be + r**be) * math.log(p) for p, r in zip(ps, rs)) / T
        elif name == "wtnpo":
            be, al = opts["beta"], opts["alpha"]
            v = sum(2 * p ** (be + al) / (p**be + r**be + 1e-5) * math.log(p) for p, r in zip(ps, rs)) / T
        elif name == "kl":
            kls = []
            for t, _ in _hand_answer_positions(labels)[b]:
                q = _softmax(logits[b, t].tolist())
                p = _softmax(ref_logits[b, t].tolist())
                kls.append(sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))
            v = sum(kls) / T
        else:  # pragma: no cover
            raise AssertionError(name)
        per_sample.append(v)
    return sum(per_sample) / len(per_sample)


# Non-default options where an objective has them, so the test also shows the options are used.
CASES = {
    "ga": {},
    "nll": {},
    "idk": {},
    "mismatch": {},
    "uce": {"eps": 0.3},
    "npo": {"beta": 0.5},
    "simnpo": {"beta": 2.0, "delta": 0.4},
    "wga": {"alpha": 2.0},
    "tnpo": {"beta": 3.0},
    "wtnpo": {"beta": 3.0, "alpha": 1.5},
    "kl": {},
}


def _reference(seed: int) -> Reference:
    return Reference(FakeLM(_logits(seed)), shares_weights=False)


# ----------------------------------------------------------------------------------------------- hand computations


@pytest.mark.parametrize("name", list(CASES))
def test_loss_matches_hand_computation(name):
    opts = CASES[name]
    model, ref = FakeLM(_logits(1)), _reference(2)
    got = get(name, **opts)(model, _batch(), ref).item()
    want = _hand_loss(name, opts, _logits(1), _logits(2), _batch()["labels"])
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_defaults_match_objectives_md():
    assert get("uce").options.eps == 0.5
    assert get("npo").options.beta == 0.1
    assert (get("simnpo").options.beta, get("simnpo").options.delta) == (2.5, 0.0)
    assert get("wga").options.alpha == 5.0
    assert get("tnpo").options.beta == 4.0
    assert (get("wtnpo").options.beta, get("wtnpo").options.alpha) == (4.0, 1.5)
    assert get("mismatch").options.k == 5


def test_npo_is_log2_scaled_when_model_equals_reference():
    # NLL_theta == NLL_ref gives -(2/beta) log(1/2) for every sample, whatever the logits.
    model = FakeLM(_logits(3))
    loss = get("npo", beta=0.25)(model, _batch(), Reference(FakeLM(_logits(3)), shares_weights=False))
    assert loss.item() == pytest.approx(8 * math.log(2), rel=1e-6)


def test_tnpo_weight_is_one_at_reference_so_it_equals_ga():
    model = FakeLM(_logits(4))
    ref = Reference(FakeLM(_logits(4)), shares_weights=False)
    assert get("tnpo")(model, _batch(), ref).item() == pytest.approx(get("ga")(model, _batch()).item(), rel=1e-6)


def test_reference_objectives_require_reference():
    for name in ("npo", "tnpo", "wtnpo", "kl", "rmu_retain"):
        with pytest.raises(ValueError, match=f"'{name}' needs the reference"):
            get(name)(FakeLM(_logits(1)), _batch())


# ---------------------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("name", LOGIT_OBJECTIVES)
def test_non_answer_positions_never_count(name):
    batch = _batch()
    # Positions whose next label is -100 (prompt and padding) in the shifted view, plus the last position.
    answer = torch.zeros(2, 5, dtype=torch.bool)
    answer[:, :-1] = batch["labels"][:, 1:].ne(-100)
    noise = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(9)) * 50
    base_logits, ref_logits = _logits(1), _logits(2)
    changed = torch.where(answer[..., None], base_logits, base_logits + noise)
    changed_ref = torch.where(answer[..., None], ref_logits, ref_logits - noise)
    obj = get(name)
    model = FakeLM(base_logits)
    loss = obj(model, batch, Reference(FakeLM(ref_logits), shares_weights=False))
    loss.backward()
    other = obj(FakeLM(changed), batch, Reference(FakeLM(changed_ref), shares_weights=False))
    assert other.item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
    # And no gradient flows into the masked positions at all.
    assert torch.all(model.out_logits.grad[~answer] == 0)
    assert model.out_logits.grad[answer].abs().sum() > 0


def test_batch_row_without_answer_tokens_is_an_error():
    batch = _batch()
    batch["labels"] = batch["labels"].clone()
    batch["labels"][1] = -100
    for name in ("ga", "uce", "kl"):
        with pytest.raises(ValueError, match=r"row\(s\) \[1\] have no answer token"):
            get(name)(FakeLM(_logits(1)), batch, _reference(2))


def test_missing_labels_is_an_error():
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with pytest.raises(ValueError, match="no 'labels'"):
        get("ga")(FakeLM(_logits(1)), batch)


# ------------------------------------------------------------------------------------------- UCE vs GA near p -> 0


class ProbLM(torch.nn.Module):
    """One sequence, one answer token (id 0) whose probability is the leaf parameter ``p``; the rest share 1 - p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor(p, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        rest = ((1 - self.p) / (V - 1)).log().expand(V - 1)
        row = torch.cat([self.p.log()[None], rest])
        logits = torch.stack([row, torch.zeros(V, dtype=torch.float64)])[None]  # (1, 2, V): position 0 scores token 1
        return SimpleNamespace(logits=logits)


def _one_token_batch():
    return {"input_ids": torch.tensor([[7, 0]]), "labels": torch.tensor([[-100, 0]])}


def test_uce_gradient_in_p_is_bounded_where_ga_explodes():
    eps = 0.5
    for p in (0.5, 1e-3, 1e-6, 1e-9):
        grads = {}
        for name in ("ga", "uce"):
            model = ProbLM(p)
            get(name, **({"eps": eps} if name == "uce" else {}))(model, _one_token_batch()).backward()
            grads[name] = model.p.grad.item()
        assert grads["ga"] == pytest.approx(1 / p, rel=1e-4)  # d(log p)/dp
        assert grads["uce"] == pytest.approx((1 - eps) / (1 - (1 - eps) * p), rel=1e-4)
        assert 0 < grads["uce"] <= (1 - eps) / eps
    assert grads["ga"] > 1e8  # at p = 1e-9 GA's gradient has exploded; UCE's is still <= 1


def test_uce_loss_is_bounded_and_ga_is_not():
    eps = 0.2
    for p in (1.0 - 1e-12, 0.5, 1e-30):
        uce = get("uce", eps=eps)(ProbLM(p), _one_token_batch()).item()
        assert 0 <= uce <= -math.log(eps) * (1 + 1e-6)  # float32 rounding
    assert get("uce", eps=eps)(ProbLM(1e-30), _one_token_batch()).item() == pytest.approx(0, abs=1e-20)
    assert get("ga")(ProbLM(1e-30), _one_token_batch()).item() == pytest.approx(math.log(1e-30))


@pytest.mark.parametrize("name", LOGIT_OBJECTIVES)
def test_extreme_logits_stay_finite(name):
    logits = _logits(1) * 1e4  # probabilities of 0 and 1 in float32
    model = FakeLM(logits)
    loss = get(name)(model, _batch(), Reference(FakeLM(-logits), shares_weights=False))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(model.out_logits.grad).all()


def test_wtnpo_weights_do_not_underflow():
    w = get("wtnpo").token_weights(torch.tensor([-300.0, 0.0]), torch.tensor([-300.0, -1.0]))
    # p = p_ref = e^-300: 2 p^5.5 / (2 p^4 + 1e-5) -> underflows to 0 honestly, never NaN; p = 1 against p_ref = e^-1.
    assert torch.isfinite(w).all()
    assert w[1].item() == pytest.approx(2 / (1 + math.exp(-4) + 1e-5), rel=1e-6)


# --------------------------------------------------------------------------------------- KL and RMU on tiny models


def _tiny_batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, 8), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # 4 prompt tokens
    attention = torch.ones_like(ids)
    ids[1, 6:], labels[1, 6:], attention[1, 6:] = 2, -100, 0  # right padding in row 1
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def test_kl_is_zero_with_zero_gradient_at_reference_and_positive_after_a_change():
    model = tiny_model(vocab_size=97, num_layers=2)
    ref = Reference.from_model(model)
    batch = _tiny_batch(97)
    loss = get("kl")(model, batch, ref)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())
    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    assert get("kl")(model, batch, ref).item() > 1e-4


def test_rmu_matches_manual_mse_over_non_padding_tokens():
    model = tiny_model(vocab_size=97, num_layers=4)
    batch = _tiny_batch(97)
    obj = get("rmu", layer=1, coeff=3.0, seed=5)
    loss = obj(model, batch)
    h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    h = h.hidden_states[2].detach()
    u = torch.rand(64, generator=torch.Generator().manual_seed(5))
    target = 3.0 * u / u.norm()
    keep = batch["attention_mask"].bool()
    want = ((h - target) ** 2).mean(-1)[keep].mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert steering_vector(64, 5).norm().item() == pytest.approx(1.0, rel=1e-6)
    # The padding tokens' states do not count: the same row without its padding gives the same per-token errors.
    trimmed = {k: v[1:, :6] for k, v in batch.items()}
    h1 = model(input_ids=trimmed["input_ids"], output_hidden_states=True).hidden_states[2].detach()
    assert obj(model, trimmed).item() == pytest.approx(((h1 - target) ** 2).mean().item(), rel=1e-5)


def test_rmu_default_layer_is_middle_and_bad_layer_is_named():
    model = tiny_model(vocab_size=97, num_layers=4)
    batch = _tiny_batch(97)
    assert get("rmu")(model, batch).item() == pytest.approx(get("rmu", layer=2)(model, batch).item())
    with pytest.raises(ValueError, match=r"option 'layer' = 4 is out of range; the model has 4 layers \(0\.\.3\)"):
        get("rmu", layer=4)(model, batch)
    with pytest.raises(ValueError, match="option 'layer'"):
        get("rmu", layer=-1)


def test_rmu_sgd_step_lowers_forget_part_and_retain_part_starts_at_zero():
    model = tiny_model(vocab_size=97, num_layers=2)
    ref = Reference.from_model(model)
    batch = _tiny_batch(97)
    rmu, retain = get("rmu", layer=0), get("rmu_retain", layer=0)
    assert retain(model, batch, ref).item() == 0.0
    before = rmu(model, batch)
    before.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.05 * p.grad)
    assert rmu(model, batch).item() < before.item()
    assert retain(model, batch, ref).item() > 0.0


@pytest.mark.parametrize(("name", "direction"), [("ga", -1), ("nll", +1)])
def test_one_sgd_step_moves_the_answer_logprob(name, direction):
    model = tiny_model(vocab_size=97, num_layers=2)
    batch = _tiny_batch(97, seed=1)

    def answer_logprob() -> float:
        return -get("nll")(model, batch).item()

    start = answer_logprob()
    model.zero_grad()
    get(name)(model, batch).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.5 * p.grad)
    assert direction * (answer_logprob() - start) > 1e-3


# --------------------------------------------------------------------------------------------- data transforms


def _records(n: int, prefix: str) -> list[QARecord]:
    return [
        QARecord(f"{prefix} question {i}?", f"{prefix} answer {i}.", source=f"{prefix}.jsonl:{i + 1}") for i in range(n)
    ]


def test_nll_prepare_records_is_identity():
    forget = _records(3, "f")
    assert prepare_records(get("nll"), forget, rng=random.Random(0)) == forget


def test_idk_replaces_answers_with_builtin_refusals():
    forget = _records(30, "f")
    out = prepare_records(get("idk"), forget, rng=random.Random(0))
    assert [r.question for r in out] == [r.question for r in forget]
    assert all(r.answer in DEFAULT_REFUSALS for r in out)
    assert len({r.answer for r in out}) > 1  # drawn at random, not one fixed string
    assert [r.extra["original_answer"] for r in out] == [r.answer for r in forget]
    assert [r.source for r in out] == [r.source for r in forget]
    assert out == prepare_records(get("idk"), forget, rng=random.Random(0))  # deterministic given the rng
    assert 15 <= len(DEFAULT_REFUSALS) <= 30


def test_idk_uses_given_refusals_from_argument_option_or_tofu_file():
    forget = _records(5, "f")
    out = get("idk").prepare_records(forget, refusals=["nope"], rng=random.Random(0))
    assert {r.answer for r in out} == {"nope"}
    out = get("idk", refusals=["no idea", "pass"]).prepare_records(forget, rng=random.Random(0))
    assert {r.answer for r in out} <= {"no idea", "pass"}
    tofu = DATA / "tofu" / "idontknow.jsonl"
    lines = [s.strip() for s in tofu.read_text(encoding="utf-8").splitlines() if s.strip()]
    out = get("idk", refusals_file=str(tofu)).prepare_records(_records(40, "f"), rng=random.Random(1))
    assert all(r.answer in lines for r in out)
    assert "I'm not certain about that." in lines


def test_idk_bad_refusals_are_named(tmp_path):
    with pytest.raises(ValueError, match="option 'refusals': .*at least one"):
        get("idk", refusals=[])
    with pytest.raises(ValueError, match="option 'refusals_file': .*no such file"):
        get("idk", refusals_file=str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no refusal found"):
        get("idk", refusals_file=str(empty)).prepare_records(_records(1, "f"), rng=random.Random(0))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('"quoted"\n{"text": "object"}\nplain\n')
    got = get("idk", refusals_file=str(mixed)).refusal_list()
    assert got == ["quoted", "object", "plain"]


def test_mismatch_pairs_each_prompt_with_k_random_normal_answers():
    forget, normal = _records(3, "f"), _records(20, "n")
    out = prepare_records(get("mismatch", k=4), forget, normal=normal, rng=random.Random(0))
    assert len(out) == 12
    normal_answers = {r.answer for r in normal}
    for i, rec in enumerate(forget):
        group = out[4 * i : 4 * i + 4]
        assert all(r.question == rec.question for r in group)
        assert all(r.answer in normal_answers for r in group)
        assert len({r.answer for r in group}) == 4  # without replacement when there are enough answers
        assert all(r.extra["original_answer"] == rec.answer for r in group)
    # Fewer normal answers than k: drawn with replacement, still k per prompt.
    out = get("mismatch", k=5).prepare_records(forget, normal=normal[:2], rng=random.Random(0))
    assert len(out) == 15 and {r.answer for r in out} <= {normal[0].answer, normal[1].answer}


def test_mismatch_without_normal_data_is_a_clear_error():
    with pytest.raises(ValueError, match="'mismatch' needs normal data .* none was given"):
        get("mismatch").prepare_records(_records(2, "f"), normal=None, rng=random.Random(0))
    with pytest.raises(ValueError, match="option 'k'"):
        get("mismatch", k=0)


# ------------------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_objective():
    assert set(available()) == set(LOGIT_OBJECTIVES) | {"rmu", "rmu_retain"}
    assert available() == sorted(available())


def test_unknown_objective_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown objective 'gradascent'; known: ga, idk, kl"):
        get("gradascent")


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match=r"objective 'uce': option 'eps': .*less than 1 \(got 2\)"):
        get("uce", eps=2)
    with pytest.raises(ValueError, match=r"option 'epsilon': unknown option \(its options: eps\)"):
        get("uce", epsilon=0.3)
    with pytest.raises(ValueError, match=r"option 'beta'"):
        get("npo", beta="big")
    with pytest.raises(ValueError, match=r"option 'beta'"):
        get("ga", beta=1.0)


def test_register_decorator_and_conflicts():
    @register
    class Zero(Objective):
        name = "test_zero"

        def loss(self, model, batch, reference=None):
            return torch.zeros(())

    try:
        assert "test_zero" in available() and isinstance(get("test_zero"), Zero)
    finally:
        OBJECTIVES._entries.pop("test_zero", None)  # keep the global registry as it was for other tests

    class Other(Objective):
        name = "ga"

        def loss(self, model, batch, reference=None):  # pragma: no cover
            return torch.zeros(())

    with pytest.raises(ValueError, match="'ga' is already registered"):
        register(Other)
    with pytest.raises(TypeError):
        register(int)


def test_kl_analytic_gradient_matches_finite_differences():
    from mollm.objectives.kl import _KLFromLogits

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(3, 6, generator=g, dtype=torch.float64), dim=-1)
    assert torch.autograd.gradcheck(lambda z: _KLFromLogits.apply(z, ref_logp), (logits,))
