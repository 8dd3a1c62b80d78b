"""G-effect toolkit: groups, totals vs dense inner products, first-order check, implicit weights, callback, LoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mollm.geffect import (
    GEffectCallback,
    GradEMA,
    answer_nll,
    compute_geffects,
    implicit_weights,
    param_groups,
    read_jsonl,
    token_weights,
    verify_first_order,
)
from mollm.models.reference import Reference
from mollm.models.tiny import tiny_model
from mollm.objectives import get as get_objective

VOCAB = 96


def _model(tied: bool = True, layers: int = 3, seed: int = 0) -> torch.nn.Module:
    return tiny_model(
        VOCAB, num_layers=layers, hidden_size=32, num_heads=4, tie_word_embeddings=tied, seed=seed
    ).double()


def _batch(seed: int, n: int = 3, prompt: int = 4, answers: tuple[int, ...] = (5, 3, 4)) -> dict[str, torch.Tensor]:
    """Right-padded batch: prompt tokens masked, answers of different lengths, padding masked."""
    g = torch.Generator().manual_seed(seed)
    width = prompt + max(answers)
    ids = torch.full((n, width), 2, dtype=torch.long)
    am = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for i in range(n):
        length = prompt + answers[i % len(answers)]
        row = torch.randint(3, VOCAB, (length,), generator=g)
        ids[i, :length] = row
        am[i, :length] = 1
        labels[i, prompt:length] = row[prompt:]
    return {"input_ids": ids, "attention_mask": am, "labels": labels}


FORGET, RETAIN = _batch(1), _batch(2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models on 2 shared cores: intra-op threads only contend (measured 100x slower with 2 threads under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _flat_grad(model, loss) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


# ---------------------------------------------------------------------------------------------- groups


def test_groups_follow_structure_and_tied_weights_counted_once():
    model = _model(tied=True, layers=3)
    g = param_groups(model)
    assert g.groups == ["embedding", "block.0", "block.1", "block.2", "final_norm"]
    assert g.n_blocks == 3 and g.blocks_path == "model.layers"
    assert [g.depth_of_group[f"block.{i}"] for i in range(3)] == ["shallow", "middle", "deep"]
    # The tied lm_head.weight is the embedding tensor: listed once, and said so.
    unique = {id(p): p for p in model.parameters()}
    assert g.numel == sum(p.numel() for p in unique.values())
    assert len(g.tied) == 1 and "lm_head.weight" in g.tied[0] and "embedding" in g.tied[0]
    untied = param_groups(_model(tied=False))
    assert untied.groups[-1] == "head" and untied.tied == []


def test_thirds_split_uneven_depths():
    g = param_groups(tiny_model(VOCAB, num_layers=4, hidden_size=16, num_heads=2))
    assert [g.depth_of_group[f"block.{i}"] for i in range(4)] == ["shallow", "shallow", "middle", "deep"]


# ---------------------------------------------------------------------------------------------- totals


@pytest.mark.parametrize("tied", [True, False])
def test_geffect_equals_dense_inner_product_and_layers_sum_to_total(tied):
    model = _model(tied=tied)
    ref = Reference.from_model(model)
    objs = {"ga": get_objective("ga"), "npo": get_objective("npo", beta=0.5), "uce": get_objective("uce")}
    res = compute_geffects(model, objs, FORGET, RETAIN, ref)
    gf = _flat_grad(model, answer_nll(model, FORGET))
    gr = _flat_grad(model, answer_nll(model, RETAIN))
    for r in res:
        go = _flat_grad(model, objs[r.objective](model, FORGET, ref))
        assert r.e_u == pytest.approx(float(gf @ go), rel=1e-6)
        assert r.e_r == pytest.approx(float(gr @ go), rel=1e-6)
        assert sum(v["e_u"] for v in r.per_group.values()) == pytest.approx(r.e_u, rel=1e-9, abs=1e-12)
        assert sum(v["e_r"] for v in r.per_group.values()) == pytest.approx(r.e_r, rel=1e-9, abs=1e-12)
        assert sum(v["e_u"] for v in r.per_depth.values()) == pytest.approx(r.e_u, rel=1e-9, abs=1e-12)
        assert set(r.per_depth) == {"embedding", "shallow", "middle", "deep", "final_norm"} | (
            set() if tied else {"head"}
        )
    ga = res[0]
    # GA = -NLL on the forget batch, so e_u = -||grad NLL(forget)||^2 exactly.
    assert ga.e_u == pytest.approx(-float(gf @ gf), rel=1e-6)
    assert ga.forget_nll == pytest.approx(float(answer_nll(model, FORGET).detach()), rel=1e-12)
    assert ga.cosine["forget"] == pytest.approx(-1.0, abs=1e-6)


def test_answer_nll_is_mean_of_per_sample_mean_ce():
    model = _model()
    logits = model(input_ids=FORGET["input_ids"], attention_mask=FORGET["attention_mask"]).logits
    ce = []
    for i in range(3):
        pos = (FORGET["labels"][i] != -100).nonzero().flatten()
        lp = torch.log_softmax(logits[i, pos - 1], -1).gather(-1, FORGET["labels"][i, pos].unsqueeze(-1))
        ce.append(-lp.mean().detach())
    assert float(answer_nll(model, FORGET).detach()) == pytest.approx(float(torch.stack(ce).mean()), rel=1e-12)


def test_grad_buffers_and_mode_untouched():
    model = _model()
    model.train()
    compute_geffects(model, ["ga"], FORGET, RETAIN)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_per_sample_contributions_sum_to_total():
    model = _model()
    (r,) = compute_geffects(model, ["uce"], FORGET, RETAIN, per_sample=True)
    assert len(r.samples.contrib_u) == 3 and len(r.samples.logp_forget) == 3
    assert sum(r.samples.contrib_u) == pytest.approx(r.e_u, rel=1e-6)
    assert sum(r.samples.contrib_r) == pytest.approx(r.e_r, rel=1e-6)
    # Raising log p of a forget sample lowers the forget NLL: <grad NLL_f, grad log p_i> is mostly negative.
    assert sum(r.samples.logp_forget) < 0


# ---------------------------------------------------------------------------------------------- first-order check


@pytest.mark.parametrize("name", ["ga", "uce", "npo"])
def test_first_order_check_matches_one_sgd_step(name):
    model = _model()
    ref = Reference.from_model(model)
    before = [p.detach().clone() for p in model.parameters()]
    # eta=None: the step is sized so the predicted forget-NLL change is 1e-3 of the NLL.
    chk = verify_first_order(model, get_objective(name), FORGET, RETAIN, reference=ref)
    assert chk.rel_err_u < 2e-3 and chk.rel_err_r < 2e-2, chk
    assert 0 < chk.predicted_du <= 1e-3 * float(answer_nll(model, FORGET).detach()) * (1 + 1e-9)
    assert chk.passed and chk.dtype == "float64"
    # Sign sanity: an unlearning objective raises the forget NLL.
    assert chk.measured_du > 0 and chk.e_u < 0
    # The parameters are restored exactly.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_first_order_check_fails_loudly_for_a_large_step():
    model = _model()
    chk = verify_first_order(model, get_objective("ga"), FORGET, RETAIN, eta=50.0)
    assert not chk.passed and chk.rel_err_u > 0.05


# ---------------------------------------------------------------------------------------------- implicit weights


def test_ga_implicit_weights_are_inverse_confidence():
    logp = torch.tensor([[math.log(0.5), math.log(0.25), 0.0], [math.log(0.1), 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    w = implicit_weights("ga", logp, mask)
    assert w.token_weight == [[1.0, 1.0], [1.0]]
    assert w.token_weight_on_p[0] == pytest.approx([2.0, 4.0])
    assert w.token_weight_on_p[1] == pytest.approx([10.0])
    # Per sample: 1 / pbar with pbar the geometric-mean token probability: sqrt(0.5 * 0.25), 0.1.
    assert w.sample_weight_on_p == pytest.approx([1 / math.sqrt(0.125), 10.0])


def test_weights_of_uce_npo_wga_by_hand():
    lp = torch.tensor([[math.log(0.8), math.log(0.2)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.4), math.log(0.2)]], dtype=torch.float64)
    mask = torch.ones_like(lp, dtype=torch.bool)
    w, _ = token_weights("uce", lp, mask, options={"eps": 0.5})
    assert w[0].tolist() == pytest.approx([0.4 / 0.6, 0.1 / 0.9])
    w, _ = token_weights("wga", lp, mask, options={"alpha": 2.0})
    assert w[0].tolist() == pytest.approx([0.64, 0.04])
    w, _ = token_weights("tnpo", lp, mask, ref, options={"beta": 1.0})
    assert w[0].tolist() == pytest.approx([2 * 0.8 / 1.2, 1.0])
    w, s = token_weights("npo", lp, mask, ref, options={"beta": 1.0})
    p, pr = 0.8 * 0.2, 0.4 * 0.2  # sequence probabilities
    assert float(s[0]) == pytest.approx(2 * p / (p + pr))
    assert w[0].tolist() == pytest.approx([2 * float(s[0])] * 2)  # T_i * s_i relative to mean-CE GA
    with pytest.raises(ValueError, match="reference"):
        token_weights("npo", lp, mask)
    with pytest.raises(ValueError, match="no implicit-weight formula for objective 'kl'"):
        token_weights("kl", lp, mask)


@pytest.mark.parametrize(
    "name,opts",
    [
        ("ga", {}),
        ("uce", {"eps": 0.3}),
        ("npo", {"beta": 0.5}),
        ("simnpo", {}),
        ("wga", {"alpha": 2.0}),
        ("tnpo", {}),
        ("wtnpo", {}),
    ],
)
def test_weights_reproduce_the_objective_gradient(name, opts):
    """The surrogate (1/N) sum_i (1/T_i) sum_t w_it log p_it has exactly the objective's gradient."""
    model = _model(seed=3)
    ref_model = _model(seed=4)
    ref = Reference(ref_model.eval().requires_grad_(False), shares_weights=False)
    obj = get_objective(name, **opts)
    from mollm.geffect.core import sequence_logprobs

    lp, mask = sequence_logprobs(model, FORGET)
    ref_lp, _ = ref.token_logprobs(FORGET)
    w, _ = token_weights(name, lp, mask, ref_lp, obj.options.model_dump())
    surrogate = ((w * lp).sum(-1) / mask.sum(-1)).mean()
    g_sur = _flat_grad(model, surrogate)
    g_obj = _flat_grad(model, obj(model, FORGET, ref))
    # The objectives compute log-probs in float32, so compare in norm at float32-level precision.
    assert float((g_sur - g_obj).norm() / g_obj.norm()) < 1e-4


def test_geffect_reports_weights_for_supported_objectives_only():
    model = _model()
    ref = Reference.from_model(model)
    res = compute_geffects(model, ["tnpo", "kl"], FORGET, RETAIN, ref)
    assert res[0].weights is not None and len(res[0].weights.token_weight) == 3
    # At the reference state TNPO's weight is exactly 2 sigma(0) = 1 (it starts as GA).
    assert all(v == pytest.approx(1.0) for row in res[0].weights.token_weight for v in row)
    assert res[1].weights is None
    # KL at the reference state has zero gradient: zero G-effect, finite output.
    assert res[1].e_u == 0.0 and res[1].e_r == 0.0


# ---------------------------------------------------------------------------------------------- EMA, callback, LoRA


def test_ema_smooths_with_paper_coefficients():
    ema = GradEMA()
    a, b = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    assert torch.equal(ema("k", a)[0], a[0])
    assert torch.allclose(ema("k", b)[0], 0.6 * a[0] + 0.4 * b[0])
    model = _model()
    ema2 = GradEMA()
    r1 = compute_geffects(model, ["ga"], FORGET, RETAIN, ema=ema2)[0]
    r2 = compute_geffects(model, ["ga"], FORGET, RETAIN, ema=ema2)[0]
    assert r2.ema and r2.e_u == pytest.approx(r1.e_u, rel=1e-9)  # same state twice: the EMA is a fixed point


def test_callback_appends_jsonl_every_n_steps(tmp_path):
    model = _model()
    cb = GEffectCallback(["ga", "uce"], FORGET, RETAIN, every=2, out_dir=tmp_path)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ga = get_objective("ga")
    for step in range(5):
        opt.zero_grad()
        ga(model, FORGET).backward()
        opt.step()
        out = cb.on_step(step, model)
        assert (out is None) == (step % 2 != 0)
    rows = read_jsonl(tmp_path / "geffect.jsonl")
    assert [(r["step"], r["objective"]) for r in rows] == [(s, o) for s in (0, 2, 4) for o in ("ga", "uce")]
    for line in (tmp_path / "geffect.jsonl").read_text().splitlines():
        d = json.loads(line)
        assert set(d["per_group"]) >= {"embedding", "block.0", "final_norm"}
    # GA keeps raising the forget NLL along its own trajectory.
    ga_nll = [r["forget_nll"] for r in rows if r["objective"] == "ga"]
    assert ga_nll[0] < ga_nll[1] < ga_nll[2]
    with pytest.raises(ValueError, match="every"):
        GEffectCallback(["ga"], FORGET, every=0)


def test_lora_grouping_covers_only_adapter_params():
    from mollm.models.lora import apply_lora

    model = apply_lora(tiny_model(VOCAB, num_layers=3, hidden_size=32, num_heads=4).double(), r=2)
    g = param_groups(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(g.names) == trainable and all("lora_" in n for n in g.names)
    assert g.groups == ["block.0", "block.1", "block.2"]
    # LoRA's B starts at zero, so only lora_B receives gradient and the G-effect is still well defined.
    (r,) = compute_geffects(model, ["ga"], FORGET, RETAIN)
    assert r.e_u < 0 and r.n_params == g.numel
    assert sum(v["e_u"] for v in r.per_group.values()) == pytest.approx(r.e_u, rel=1e-9)


def test_bad_input_errors_name_the_field():
    model = _model()
    with pytest.raises(ValueError, match="forget_batch: the batch has no 'labels'"):
        compute_geffects(model, ["ga"], {"input_ids": FORGET["input_ids"]})
    frozen = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        param_groups(frozen)
    with pytest.raises(ValueError, match="eta"):
        verify_first_order(model, get_objective("ga"), FORGET, RETAIN, eta=-1.0)


def test_cli_plots_and_summarises_a_runs_jsonl(tmp_path):
    from mollm.cli.geffect import geffect_cmd, parse_objectives

    model = _model()
    cb = GEffectCallback(["ga", "uce"], FORGET, RETAIN, every=1, out_dir=tmp_path / "run", per_sample=True)
    for step in range(2):
        cb.on_step(step, model)
    out = tmp_path / "out"
    geffect_cmd(from_jsonl=tmp_path / "run" / "geffect.jsonl", out=out)
    for name in ("geffect.json", "geffect_curves.png", "geffect_heatmap_e_r.png", "geffect_samples.png", "summary.md"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "summary.md").read_text()
    assert "| ga | 2 |" in md and "| uce | 2 |" in md
    assert json.loads((out / "geffect.json").read_text())["rows"][0]["objective"] == "ga"
    objs = parse_objectives("ga,npo:beta=0.5")
    assert list(objs) == ["ga", "npo:beta=0.5"] and objs["npo:beta=0.5"].options.beta == 0.5
    import typer

    with pytest.raises(typer.BadParameter, match="unknown objective 'gaa'"):
        parse_objectives("gaa")


class _CharTokenizer:
    """A stand-in tokenizer (one token per character) so the CLI path runs without a real model folder."""

    eos_token_id = 2
    pad_token_id = 2
    chat_template = None

    def __call__(self, text, add_special_tokens=False):  # a text or a list of them, as Hugging Face tokenizers take
        ids = lambda t: [3 + (ord(c) % (VOCAB - 3)) for c in t]  # noqa: E731
        return {"input_ids": ids(text) if isinstance(text, str) else [ids(t) for t in text]}


def test_cli_over_checkpoints_with_verify(tmp_path, monkeypatch):
    import mollm.models.loading as loading
    from mollm.cli.geffect import geffect_cmd

    loaded = []

    def fake_load(spec=None, **_):
        loaded.append(spec)
        return _model(seed=len(loaded)), _CharTokenizer()

    monkeypatch.setattr(loading, "load_model", fake_load)
    run = tmp_path / "run"
    for step in (10, 5):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    data = tmp_path / "forget.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"Q{i}?", "answer": f"answer {i} text"}) for i in range(3)))
    out = tmp_path / "out"
    geffect_cmd(
        forget=str(data),
        retain=str(data),
        model=str(run),
        objectives="ga,npo:beta=0.5",
        verify=True,
        max_length=32,
        per_sample=False,
        out=out,
    )
    assert [Path(s).name for s in loaded] == ["checkpoint-5", "checkpoint-10"]  # training order
    got = json.loads((out / "geffect.json").read_text())
    assert [(r["step"], r["objective"]) for r in got["rows"]] == [
        (5, "ga"),
        (5, "npo:beta=0.5"),
        (10, "ga"),
        (10, "npo:beta=0.5"),
    ]
    assert [c["passed"] for c in got["first_order_checks"]] == [True, True]
    assert "## First-order check" in (out / "summary.md").read_text()
