"""Pure evaluation metrics against hand computations (no model)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from mollm.evaluation import stats, text
from mollm.evaluation.reference_logs import (
    ReferenceBaseError,
    ReferenceLogError,
    ReferenceValues,
    check_reference_base,
    load_reference_truth_ratios,
    read_reference_mia_auc,
    read_reference_truth_ratios,
    read_tofu_log,
)
from mollm.evaluation.training import training_metrics

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOGS = DATA / "tofu" / "reference_logs"


# --- text --------------------------------------------------------------------------------------------------------


def test_rouge_l_recall_by_hand():
    # LCS("the cat sat on the mat", "the cat was sitting") = "the cat" -> 2 of 6 reference tokens.
    assert text.rouge_l_recall("the cat was sitting", "the cat sat on the mat") == pytest.approx(2 / 6)
    # LCS = cat sat on mat -> 4/6; recall is about the reference, so the prediction's extra words do not matter.
    assert text.rouge_l_recall("a cat sat on a mat today", "the cat sat on the mat") == pytest.approx(4 / 6)
    # Porter stemming as in TOFU: cats/cat, running/runs -> run.
    assert text.rouge_l_recall("cats running", "cat runs") == pytest.approx(1.0)
    assert text.rouge_l_recall("", "cat runs") == 0.0


def test_ngram_entropy_by_hand():
    assert text.ngram_entropy("a a a a", 2) == 0.0
    assert text.ngram_entropy("a a a a", 3) == 0.0
    assert text.ngram_entropy("a b c d e", 2) == pytest.approx(math.log(4))  # 4 distinct bigrams
    assert text.ngram_entropy("a b c d e", 3) == pytest.approx(math.log(3))
    # "a b a b": bigrams ab, ba, ab -> p = (2/3, 1/3)
    assert text.ngram_entropy("a b a b", 2) == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert text.ngram_entropy("", 2) == 0.0
    assert text.ngram_entropy("A, a,", 1) == pytest.approx(math.log(2))  # lower-cased; punctuation is a token


def test_repetition_and_degenerate():
    assert text.repetition_rate("a b c d e", 3) == 0.0
    # 3-grams of "10 10 10 10 10": three, all the same -> 2 of 3 repeat
    assert text.repetition_rate("10 10 10 10 10", 3) == pytest.approx(2 / 3)
    assert text.is_degenerate("")
    assert text.is_degenerate("   \n")
    assert text.is_degenerate("A 10 10 10 10 10 10 10 10")
    assert text.is_degenerate(",,,,,,,,,,,,")
    assert not text.is_degenerate("The capital of France is Paris, a city on the Seine.")
    assert not text.is_degenerate("Yes")  # short but not empty
    assert text.is_degenerate("1" + "\n" * 39)  # one token, then only newlines (seen after gradient ascent)
    assert not text.is_degenerate("Paris.\n\nIt lies on the Seine.\n")  # paragraph breaks in prose are fine
    with pytest.raises(ValueError, match="threshold"):
        text.is_degenerate("x", threshold=1.5)


# --- truth ratio, probability, forget quality, utility ------------------------------------------------------------


def test_truth_ratio_by_hand():
    assert stats.truth_ratio(1.0, [2.0, 3.0]) == pytest.approx(math.exp(1.0 - 2.5))
    # forget aggregate: mean(min(TR, 1/TR)) of [0.5, 2, 1] = (0.5 + 0.5 + 1) / 3
    assert stats.truth_ratio_score([0.5, 2.0, 1.0], "forget") == pytest.approx(2 / 3)
    # retain aggregate: mean(max(0, 1 - TR)) of [0.5, 2, 0.25] = (0.5 + 0 + 0.75) / 3
    assert stats.truth_ratio_score([0.5, 2.0, 0.25], "retain") == pytest.approx(5 / 12)
    with pytest.raises(ValueError, match="kind"):
        stats.truth_ratio_score([1.0], "world")
    with pytest.raises(ValueError, match="not finite"):
        stats.truth_ratio(1.0, [float("nan")])


def test_probabilities_by_hand():
    assert stats.probability(math.log(2)) == pytest.approx(0.5)
    # p_true = 0.5, p_wrong = 0.25 + 0.25 -> 0.5 / 1.0
    assert stats.normalized_probability(math.log(2), [math.log(4), math.log(4)]) == pytest.approx(0.5)
    # No underflow to 0/0 for very improbable answers: the ratio only depends on differences.
    assert stats.normalized_probability(5000.0, [5000.0 + math.log(3)]) == pytest.approx(0.75)


def test_forget_quality_ks():
    # Fully separated samples of 3 and 3: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1
    fq = stats.forget_quality([1, 2, 3], [4, 5, 6])
    assert fq["statistic"] == pytest.approx(1.0)
    assert fq["pvalue"] == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=30), rng.lognormal(0.5, size=25)
    assert stats.forget_quality(a, b)["pvalue"] == pytest.approx(ks_2samp(a, b).pvalue)
    # TOFU's orientation (1/TR on both sides) gives the same p-value.
    assert stats.forget_quality(1 / a, 1 / b)["pvalue"] == pytest.approx(stats.forget_quality(a, b)["pvalue"])
    assert stats.forget_quality(a, a)["pvalue"] == pytest.approx(1.0)


def test_model_utility_harmonic_mean():
    assert stats.model_utility([0.5] * 9) == pytest.approx(0.5)
    assert stats.model_utility([1.0] * 8 + [0.5]) == pytest.approx(9 / (8 + 2))
    assert stats.model_utility([1.0] * 8 + [0.0]) == 0.0
    named = {f"m{i}": 0.25 for i in range(9)}
    assert stats.model_utility(named) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="expected 9"):
        stats.model_utility([0.5] * 8)
    with pytest.raises(ValueError, match="m3"):
        stats.model_utility({**named, "m3": float("nan")})


# --- membership inference, extraction ----------------------------------------------------------------------------


def test_auc_four_items_by_hand():
    # members 0.9, 0.4; non-members 0.5, 0.1: pairs won 0.9>0.5, 0.9>0.1, 0.4>0.1; lost 0.4<0.5 -> 3/4
    assert stats.auc([0.9, 0.4], [0.5, 0.1]) == pytest.approx(0.75)
    assert stats.auc([1.0, 2.0], [1.0, 0.0]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)  # a tie counts 1/2
    assert stats.auc([0.0], [1.0]) == 0.0


def test_privleak_by_hand():
    assert stats.privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert stats.privleak(0.5, 0.5) == pytest.approx(0.0)
    assert stats.privleak(0.4, 0.6) == pytest.approx((0.6 - 0.4) / 0.4 * 100)


def test_min_k_scores_by_hand():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert stats.min_k_score(lp, 0.4) == pytest.approx(-4.5)  # lowest 2 of 5
    assert stats.min_k_score([-1.0, -7.0], 0.4) == pytest.approx(-7.0)  # at least one token
    # with mu = 0, sigma = 1 Min-K%++ is Min-K%; with mu = log p every z is 0
    assert stats.min_k_plus_plus_score(lp, [0.0] * 5, [1.0] * 5) == pytest.approx(-4.5)
    assert stats.min_k_plus_plus_score(lp, lp, [2.0] * 5) == pytest.approx(0.0)
    # z = (lp - mu) / sigma = (-1 - -3)/2 = 1 and (-5 - -1)/2 = -2 -> lowest 40% of 2 -> -2
    assert stats.min_k_plus_plus_score([-1.0, -5.0], [-3.0, -1.0], [2.0, 2.0]) == pytest.approx(-2.0)
    assert stats.loss_score(lp) == pytest.approx(-3.0)
    assert stats.zlib_score(lp, "abcabc") == pytest.approx(-3.0 / len(zlib.compress(b"abcabc")))


def test_extraction_strength_by_hand():
    assert stats.extraction_strength([5, 6, 7, 8], [5, 0, 7, 8]) == pytest.approx(0.5)  # suffix from k=2
    assert stats.extraction_strength([5, 6, 7, 8], [5, 6, 7, 8]) == 1.0
    assert stats.extraction_strength([5, 6, 7, 8], [5, 6, 7, 0]) == 0.0
    assert stats.extraction_strength([5, 6, 7, 8], [0, 6, 7, 8]) == pytest.approx(0.75)


# --- TOFU reference logs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mean", "n"),
    [
        ("phi_retain90_wd0.01", 0.928, 300),
        ("phi_retain90_wd0", 0.927, 300),
        ("phi_retain95_wd0.01", 0.923, 200),
        ("phi_retain95_wd0", 0.922, 200),
        ("phi_retain99_wd0.01", 0.825, 40),
        ("phi_retain99_wd0", 0.831, 40),
    ],
)
def test_tofu_reference_logs(name, mean, n):
    path = LOGS / f"{name}_eval_log_forget.json"
    log = read_tofu_log(path)
    tr = log["truth_ratio"]
    assert len(tr) == n
    assert np.mean(tr) == pytest.approx(mean, abs=6e-4)
    # The stored per-item truth ratio is our definition from the stored average NLLs.
    for i in range(0, n, 7):
        ours = stats.truth_ratio(log["avg_paraphrased_loss"][i], log["average_perturb_loss"][i])
        assert ours == pytest.approx(tr[i], rel=1e-5)
    assert load_reference_truth_ratios(path) == [float(v) for v in tr]


def test_reference_sources_and_errors(tmp_path):
    assert load_reference_truth_ratios([0.5, 1]) == [0.5, 1.0]
    lst = tmp_path / "tr.json"
    lst.write_text("[0.5, 0.25]")
    assert load_reference_truth_ratios(lst) == [0.5, 0.25]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"suites": {"forget": {"truth_ratio": {"per_item": [0.1, 0.2]}}, "x": {}}}))
    assert load_reference_truth_ratios(results) == [0.1, 0.2]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"truth_ratio": {"0": 1.0, "2": 0.5}}))
    with pytest.raises(ReferenceLogError, match="indices"):
        read_tofu_log(bad)
    with pytest.raises(ReferenceLogError, match="not found"):
        load_reference_truth_ratios(tmp_path / "missing.json")


SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_reference_bases_recorded_inferred_or_unknown(tmp_path):
    for path in sorted(LOGS.glob("phi_*_eval_log_forget.json")):  # TOFU logs record no base: Phi-1.5's
        ref = read_reference_truth_ratios(path)
        assert (ref.base, ref.recorded) == ("microsoft/phi-1_5", False), path
    llama = tmp_path / "ft_epoch5_lr1e-05_llama2-7b_retain99_wd0.01" / "eval_log_forget.json"
    llama.parent.mkdir()
    llama.write_text((LOGS / "phi_retain99_wd0_eval_log_forget.json").read_text())
    assert read_reference_truth_ratios(llama).base is None  # TOFU's Llama logs: base unknown

    results = {"base_model": SMOL, "suites": {"forget": {"fq": {"name": "forget_quality", "per_item": [0.5, 2.0]}}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    ref = read_reference_truth_ratios(tmp_path / "results.json")  # found by the entry's name under an 'as' key
    assert (ref.values, ref.base, ref.recorded) == ([0.5, 2.0], SMOL, True)
    del results["base_model"]
    (tmp_path / "old.json").write_text(json.dumps(results))
    assert read_reference_truth_ratios(tmp_path / "old.json").base is None
    assert read_reference_truth_ratios([0.5, 1.0]).base is None

    mia = {
        "base_model": SMOL,
        "suites": {
            "f": {
                "mia": {
                    "aggregate": {"value": 0.6, "auc_loss": 0.7, "auc_min_k": 0.6},
                    "options": {"holdout": "h", "k": 0.2},
                }
            }
        },
    }
    (tmp_path / "mia.json").write_text(json.dumps(mia))
    ref = read_reference_mia_auc(tmp_path / "mia.json")
    assert (ref.values, ref.base, ref.options["k"]) == ({"loss": 0.7, "min_k": 0.6}, SMOL, 0.2)
    assert read_reference_mia_auc(0.5).base is None and read_reference_mia_auc({"loss": 0.5}).values == {"loss": 0.5}
    with pytest.raises(ReferenceLogError, match="no suite has a 'mia' result"):
        read_reference_mia_auc(tmp_path / "results.json")


def test_check_reference_base_refuses_other_and_unknown_bases_unless_stated_or_forced():
    tofu = read_reference_truth_ratios(LOGS / "phi_retain99_wd0.01_eval_log_forget.json")
    with pytest.raises(ReferenceBaseError) as err:
        check_reference_base("forget_quality", SMOL, tofu)
    msg = str(err.value)
    assert "'microsoft/phi-1_5'" in msg and f"'{SMOL}'" in msg and "allow_other_base: true" in msg
    assert "phi_retain99_wd0.01_eval_log_forget.json" in msg and "TOFU's eval log format" in msg
    assert check_reference_base("forget_quality", "microsoft/phi-1_5", tofu) == "microsoft/phi-1_5"
    assert check_reference_base("forget_quality", "Microsoft/Phi-1_5", tofu) == "microsoft/phi-1_5"  # case
    with pytest.warns(UserWarning, match="allow_other_base is true"):
        assert check_reference_base("forget_quality", SMOL, tofu, allow_other_base=True) == "microsoft/phi-1_5"
    # Stating the base replaces the TOFU inference ("embedded" resolves to SmolLM2's id).
    assert check_reference_base("forget_quality", SMOL, tofu, reference_base="embedded") == SMOL

    numbers = read_reference_truth_ratios([0.5, 1.0])
    with pytest.raises(ReferenceBaseError, match=r"has no known base model .*reference_base: .*allow_other_base"):
        check_reference_base("forget_quality", SMOL, numbers)
    assert check_reference_base("forget_quality", SMOL, numbers, reference_base=SMOL) == SMOL
    with pytest.raises(ReferenceBaseError, match="'microsoft/phi-1_5'.*descends from 'HuggingFaceTB"):
        check_reference_base("forget_quality", SMOL, numbers, reference_base="microsoft/phi-1_5")
    with pytest.warns(UserWarning, match="no known base model"):
        assert check_reference_base("mia", SMOL, numbers, allow_other_base=True) is None

    recorded = ReferenceValues([1.0], SMOL, "recorded in r.json", "r.json", recorded=True)
    with pytest.raises(ReferenceBaseError, match="contradicts the base model 'HuggingFaceTB"):
        check_reference_base("forget_quality", SMOL, recorded, reference_base="microsoft/phi-1_5")


# --- training metrics ----------------------------------------------------------------------------------------------


def test_training_metrics_by_hand(tmp_path):
    rows = [
        {
            "step": 1,
            "losses": {"forget": 3.0, "retain": 1.0},
            "grad_norms": {"forget": 2.0, "retain": 1.0},
            "conflict": False,
            "Gc": {"forget": 0.5, "retain": 0.1},
        },
        {
            "step": 2,
            "losses": {"forget": 2.0, "retain": 1.5},
            "grad_norms": {"forget": 4.0, "retain": 3.0},
            "conflict": True,
            "Gc": {"forget": 0.3, "retain": -0.1},
        },
        {
            "step": 3,
            "losses": {"forget": 0.0, "retain": None},
            "grad_norms": {"forget": 6.0, "retain": 2.0},
            "conflict": False,
            "Gc": {"forget": 0.1, "retain": 0.3},
        },
        {
            "step": 4,
            "losses": {"forget": -1.0, "retain": 0.5},
            "grad_norms": {"forget": 8.0, "retain": 2.0},
            "conflict": True,
            "Gc": {"forget": 0.1, "retain": 0.1},
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    m = training_metrics(tmp_path)
    assert m["steps"] == 4
    assert m["conflict_probability"] == pytest.approx(0.5)
    assert m["grad_norm_mean"] == pytest.approx({"forget": 5.0, "retain": 2.0})
    assert m["grad_norm_max"] == {"forget": 8.0, "retain": 3.0}
    assert m["first_order_decrease_mean"] == pytest.approx({"forget": 0.25, "retain": 0.1})
    assert m["loss_decrease"] == pytest.approx({"forget": 4.0, "retain": 0.5})  # None (skipped) left out
    assert m["loss_decrease_per_step"]["forget"] == pytest.approx(4.0 / 3)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "losses": {}}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: missing field"):
        training_metrics(tmp_path)


def test_tofu_model_utility_from_results():
    from mollm.evaluation.evaluate import tofu_model_utility

    def entry(v, **options):
        return {"aggregate": {"value": v}, "options": options}

    results = {
        "suites": {
            "retain": {"probability": entry(1.0), "rouge_l": entry(1.0), "truth_ratio": entry(0.5, kind="retain")},
            "real_authors": {
                "normalized_probability": entry(1.0),
                "rouge_l": entry(1.0),
                "truth_ratio": entry(1.0, kind="retain"),
            },
            "world_facts": {
                "normalized_probability": entry(0.5),
                "rouge_l": entry(1.0),
                "truth_ratio": entry(1.0, kind="retain"),
            },
        }
    }
    got = tofu_model_utility(results)
    assert got["value"] == pytest.approx(9 / (7 + 2 + 2))  # seven 1s and two 0.5s
    assert got["parts"]["world_facts/normalized_probability"] == 0.5
    results["suites"]["retain"]["truth_ratio"] = entry(0.5, kind="forget")
    with pytest.raises(ValueError, match="kind='retain'"):
        tofu_model_utility(results)
    with pytest.raises(ValueError, match="no suite 'retain'"):
        tofu_model_utility({"suites": {}})


class _FixedGenerations:
    """A generation store that hands out fixed answers (so generation metrics are checked without a model)."""

    def __init__(self, texts):
        self.texts = texts

    def get(self, records):
        return list(self.texts)

    def put(self, records, texts):  # pragma: no cover - never called: get always answers
        raise AssertionError("unexpected generation")


def test_refusal_rate_answer_length_and_accuracy_read_the_generations():
    from mollm.data.records import QARecord
    from mollm.evaluation.registry import EvalContext, compute_metric

    records = [QARecord(f"q{i}?", "Paris") for i in range(4)]
    texts = ["I'm sorry, I cannot help with that.", "The capital is Paris.", "", "I apologize, but no"]
    ctx = EvalContext(object(), object(), generation_store=_FixedGenerations(texts), progress=False)
    refusal = compute_metric("refusal_rate", ctx, records)
    assert refusal.per_item == [1.0, 0.0, 0.0, 1.0] and refusal.aggregate["value"] == 0.5
    length = compute_metric("answer_length", ctx, records)
    assert length.per_item == [7.0, 4.0, 0.0, 4.0] and length.aggregate == {"value": 3.75, "median": 4.0}
    acc = compute_metric("accuracy", ctx, records)
    assert acc.per_item == [0.0, 1.0, 0.0, 0.0]
