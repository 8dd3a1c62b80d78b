"""Each objective's implicit weights (``Objective.implicit_weights``) against autograd, and the G-effect reading them.

The claim checked: for an objective with weights ``w``, ``grad L = (1/B) sum_i (1/T_i) sum_t w_it grad log p_it``
(equivalently the weighted NLL gradient with weights ``-w``), with ``w`` the objective's own.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from mollm.geffect import compute_geffects, token_weights
from mollm.geffect.weights import ImplicitWeights, supported
from mollm.models.reference import Reference
from mollm.models.tiny import tiny_model
from mollm.objectives import GA, available, get
from mollm.objectives._common import model_logprobs
from mollm.objectives.base import GradWeights

VOCAB = 64
NO_WEIGHTS = {"kl", "rmu", "rmu_retain"}
# Non-default options, so the test also shows the weights use the objective's options.
OPTIONS: dict[str, dict] = {
    "ga": {},
    "nll": {},
    "idk": {},
    "mismatch": {},
    "uce": {"eps": 0.3},
    "npo": {"beta": 0.5},
    "simnpo": {"beta": 1.0, "delta": 3.5},
    "wga": {"alpha": 2.0},
    "tnpo": {"beta": 3.0},
    "wtnpo": {"beta": 3.0, "alpha": 1.0},
}
WEIGHTED = sorted(OPTIONS)


def _tiny() -> torch.nn.Module:
    model = tiny_model(VOCAB, num_layers=2, hidden_size=32, num_heads=4, seed=3).double()
    # Sharpen the random model's predictions so that answer-token probabilities spread over (0, 1) instead of all
    # sitting near 1/VOCAB: the weights then differ from token to token.
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    return model


def _batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Three right-padded rows, prompts of 3 tokens, answers of 4, 2 and 5 tokens; every other answer token is the
    model's greedy choice (probable), the others random (improbable)."""
    g = torch.Generator().manual_seed(0)
    answers, prompt = (4, 2, 5), 3
    width = prompt + max(answers)
    ids = torch.full((3, width), 2, dtype=torch.long)
    am = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, a in enumerate(answers):
        row = torch.randint(3, VOCAB, (prompt + a,), generator=g)
        for t in range(prompt, prompt + a):
            if (t + i) % 2 == 0:
                with torch.no_grad():
                    row[t] = model(input_ids=row[None, :t]).logits[0, -1].argmax()
        ids[i, : prompt + a], am[i, : prompt + a] = row, 1
        labels[i, prompt : prompt + a] = row[prompt:]
    return {"input_ids": ids, "attention_mask": am, "labels": labels}


@functools.lru_cache(maxsize=1)
def _setting() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(reference state, model state, batch): the model is the reference after one GA step on the batch, so
    ``p < p_ref`` on the improbable tokens and ``p ~ p_ref`` on the probable ones, as early in unlearning."""
    model = _tiny()
    batch = _batch(model)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=5e-3)
    get("ga")(model, batch).backward()
    opt.step()
    return ref_state, {k: v.clone() for k, v in model.state_dict().items()}, batch


def _models() -> tuple[torch.nn.Module, Reference, dict[str, torch.Tensor]]:
    ref_state, state, batch = _setting()
    model, ref_model = _tiny(), _tiny()
    model.load_state_dict(state)
    ref_model.load_state_dict(ref_state)
    return model, Reference(ref_model.eval().requires_grad_(False), shares_weights=False), batch


class _LeafLogits(torch.nn.Module):
    """A 'model' whose logits are a leaf parameter: log p at position t depends on logits[:, t] only, so comparing
    gradients position by position checks every token's weight on its own."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.z = torch.nn.Parameter(logits.detach().clone())
        self.config = SimpleNamespace(num_hidden_layers=0)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        return SimpleNamespace(logits=self.z, hidden_states=None)


def _surrogate(w: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(1/B) sum_i (1/T_i) sum_t w_it lp_it``: the weighted GA loss whose gradient the objective's should equal."""
    return ((w.detach() * logp * mask).sum(-1) / mask.sum(-1)).mean()


def _flat_grad(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    # retain_graph: one forward's log-probs serve several surrogates.
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _perturbed(w: torch.Tensor) -> torch.Tensor:
    """The weights times a random factor in [0.5, 1.5] per token: what a wrong formula could look like."""
    g = torch.Generator().manual_seed(1)
    return w * (0.5 + torch.rand(w.shape, generator=g, dtype=torch.float64).to(w.dtype))


# ------------------------------------------------------------------------------------------------ the interface


def test_exactly_the_objectives_without_a_weighted_ga_form_return_none():
    model, ref, batch = _models()
    assert set(available()) == set(OPTIONS) | NO_WEIGHTS, "a new objective: add it to OPTIONS or NO_WEIGHTS"
    for name in sorted(available()):
        w = get(name).implicit_weights(model, batch, ref)
        if name in NO_WEIGHTS:
            assert w is None, name
            continue
        assert isinstance(w, GradWeights), name
        mask = batch["labels"][:, 1:].ne(-100)
        assert w.token.shape == w.logp.shape == w.mask.shape == mask.shape and w.sample.shape == (3,), name
        assert torch.equal(w.mask, mask) and bool((w.token[~mask] == 0).all()), name
        assert not (w.token.requires_grad or w.sample.requires_grad or w.logp.requires_grad), name
        assert w.token.dtype == torch.float64, name  # a float64 model's weights stay float64
    assert supported() == sorted(OPTIONS)


def test_reference_objectives_need_the_reference_for_their_weights():
    model, _, batch = _models()
    for name in ("npo", "tnpo", "wtnpo"):
        with pytest.raises(ValueError, match=f"'{name}' needs the reference"):
            get(name).implicit_weights(model, batch)


def test_sample_weights_are_the_per_sample_view_of_the_token_weights():
    model, ref, batch = _models()
    lengths = batch["labels"][:, 1:].ne(-100).sum(-1).double()
    for name in WEIGHTED:
        w = get(name, **OPTIONS[name]).implicit_weights(model, batch, ref)
        if name == "npo":  # weight on the summed log-prob: T_i s_i per token relative to mean-CE GA
            want = w.sample * lengths
        elif name == "simnpo":  # weight on the mean log-prob: s_i per token
            want = w.sample
        else:  # token-level objectives: the sample weight is the mean token weight
            want = w.token.sum(-1) / lengths
            torch.testing.assert_close(w.sample, want, rtol=1e-12, atol=0)
            continue
        torch.testing.assert_close(w.token, want.unsqueeze(-1) * w.mask, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------ against autograd


@pytest.mark.parametrize("name", WEIGHTED)
def test_weights_match_autograd_token_by_token(name):
    """d L / d logits[i, t] == w_it / (B T_i) * d lp_it / d logits[i, t] at every position."""
    obj = get(name, **OPTIONS[name])
    tiny, tiny_ref, batch = _models()
    model = _LeafLogits(tiny(input_ids=batch["input_ids"]).logits.float())
    ref = Reference(_LeafLogits(tiny_ref.logits(batch).float()), shares_weights=False)
    w = obj.implicit_weights(model, batch, ref)
    assert float(w.token.abs().max()) > 0
    g_obj = torch.autograd.grad(obj(model, batch, ref), model.z)[0]
    logp, mask, _ = model_logprobs(name, model, batch)  # the loss's own log-probs (float32)
    g_sur = torch.autograd.grad(_surrogate(w.token, logp, mask), model.z, retain_graph=True)[0]
    torch.testing.assert_close(g_sur, g_obj, rtol=1e-4, atol=1e-9)
    # The same check rejects a wrong weight.
    g_bad = torch.autograd.grad(_surrogate(_perturbed(w.token), logp, mask), model.z)[0]
    assert _rel(g_bad, g_obj) > 0.05


@pytest.mark.parametrize("name", WEIGHTED)
def test_weights_match_autograd_on_a_tiny_model(name):
    """The gradient of the loss over a tiny Llama's parameters equals the weighted NLL gradient with the objective's
    own weights: grad L = sum_i sum_t (-w_it / (B T_i)) grad(-log p_it)."""
    obj = get(name, **OPTIONS[name])
    model, ref, batch = _models()
    w = obj.implicit_weights(model, batch, ref)
    g_obj = _flat_grad(model, obj(model, batch, ref))
    logp, mask, lengths = model_logprobs(name, model, batch, keep_float64=True)
    nll_weights = -w.token / (lengths.unsqueeze(-1) * mask.size(0))
    g_sur = _flat_grad(model, (nll_weights * (-logp) * mask).sum())
    # The losses compute log-probs in float32, the weights in float64: agreement to float32 rounding.
    assert _rel(g_sur, g_obj) < 1e-5
    assert _rel(_flat_grad(model, _surrogate(_perturbed(w.token), logp, mask)), g_obj) > 0.05
    if name in ("npo", "simnpo"):  # the sequence-level weight on its own: grad L = (1/B) sum_i s_i grad(seq. lp)
        per_seq = logp.sum(-1) if name == "npo" else logp.sum(-1) / lengths
        g_seq = _flat_grad(model, (w.sample * per_seq).mean())
        assert _rel(g_seq, g_obj) < 1e-5


# ------------------------------------------------------------------------------------------------ G-effect side


class _ScaledGA(GA):
    """GA times 0.25, with its own weights: the G-effect toolkit must report these, not a table's."""

    name = "scaled_ga_test"  # deliberately not registered

    def loss(self, model, batch, reference=None):
        return 0.25 * super().loss(model, batch, reference)

    def weights_from_logprobs(self, logp, mask, ref_logp=None):
        w = super().weights_from_logprobs(logp, mask, ref_logp)
        return GradWeights(token=0.25 * w.token, sample=0.25 * w.sample, logp=w.logp, mask=w.mask)


def test_geffect_reports_the_objectives_own_weights():
    model, ref, batch = _models()
    objs = {"scaled": _ScaledGA(), "npo": get("npo", beta=0.5), "kl": get("kl")}
    res = {r.objective: r for r in compute_geffects(model, objs, batch, batch, ref)}
    assert all(v == 0.25 for row in res["scaled"].weights.token_weight for v in row)
    want = ImplicitWeights.from_grad_weights("npo", objs["npo"].implicit_weights(model, batch, ref))
    assert res["npo"].weights == want
    assert res["kl"].weights is None


def test_name_based_weights_are_the_objectives():
    model, ref, batch = _models()
    logp, mask, _ = model_logprobs("x", model, batch, keep_float64=True)
    ref_logp, _ = ref.token_logprobs(batch)
    for name in WEIGHTED:
        w, s = token_weights(name, logp, mask, ref_logp, OPTIONS[name])
        own = get(name, **OPTIONS[name]).implicit_weights(model, batch, ref)
        assert torch.equal(w, own.token) and torch.equal(s, own.sample), name
    with pytest.raises(ValueError, match="no implicit-weight formula for objective 'rmu'"):
        token_weights("rmu", logp, mask)
