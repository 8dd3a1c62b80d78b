"""Every batch that reaches a model went through ``mollm.core.device.to_device`` — observed on a CPU-only machine.

On a GPU a batch left on the host fails at the first forward; here everything is on the CPU, so a forgotten move
would pass unnoticed. The tests make it visible instead: ``mollm.core.device._place`` (the one place a tensor is moved to
a model's device) is wrapped to return tensors of a marker subclass, and a forward pre-hook on every model (the one
trained, its frozen reference copy, a judge's classifier) rejects any input tensor that is not marked, i.e. any batch
that reached the model by another road. The hook then hands the model plain tensors, so the computation is unchanged.
"""

from __future__ import annotations

import json

import pytest
import torch

import mollm.core.device
from mollm.data.records import QARecord
from mollm.engine.config import load_config
from mollm.runs import run
from mollm.evaluation import evaluate
from mollm.models.reference import Reference
from mollm.models.tiny import tiny_model

FACTS = "n_people=6,seed=1,forget_fraction=0.34"
_INPUTS = ("input_ids", "attention_mask", "labels", "inputs_embeds", "position_ids")


class _OnDevice(torch.Tensor):
    """A tensor that came out of ``mollm.core.device._place`` (ops on it keep the mark, as device placement would)."""


def _guard(module: torch.nn.Module, seen: list[str]) -> None:
    def check(mod, args, kwargs):
        named = [("args", a) for a in args if isinstance(a, torch.Tensor)]
        named += [(k, kwargs[k]) for k in _INPUTS if isinstance(kwargs.get(k), torch.Tensor)]
        for name, tensor in named:
            if not isinstance(tensor, _OnDevice):
                raise AssertionError(f"{type(mod).__name__} got '{name}' that never went through mollm.core.device")
        seen.append(type(mod).__name__)
        plain = lambda v: v.as_subclass(torch.Tensor) if isinstance(v, _OnDevice) else v  # noqa: E731
        return tuple(plain(a) for a in args), {k: plain(v) for k, v in kwargs.items()}

    module.register_forward_pre_hook(check, with_kwargs=True)


@pytest.fixture
def placed(monkeypatch):
    real = mollm.core.device._place
    monkeypatch.setattr(mollm.core.device, "_place", lambda t, d: real(t, d).as_subclass(_OnDevice))


def test_the_guard_catches_a_batch_that_skipped_the_move(placed):
    model, seen = tiny_model(vocab_size=64), []
    _guard(model, seen)
    ids = torch.tensor([[1, 5, 6]])
    with pytest.raises(AssertionError, match="never went through mollm.core.device"):
        model(input_ids=ids)
    model(**mollm.core.device.to_device({"input_ids": ids}, "cpu"))
    assert seen == ["LlamaForCausalLM"]


def test_training_reference_evaluation_suites_and_geffect_feed_models_only_moved_batches(tmp_path, tokenizer, placed):
    model, seen = tiny_model(), []
    _guard(model, seen)  # deep-copied with the model into the frozen reference, so the reference is guarded too
    suites = {"forget": {"data": f"facts:forget#{FACTS}", "limit": 2, "metrics": ["probability", "kl", "fluency"]}}
    config = load_config(
        {
            "name": "guarded",
            "output_dir": str(tmp_path / "{name}"),
            "max_length": 48,
            "data": {"forget": f"facts:forget#{FACTS}", "retain": f"facts:retain#{FACTS}"},
            "objectives": [
                {"name": "forget", "loss": "npo", "data": "forget", "batch_size": 2},
                {"name": "kl", "loss": "kl", "data": "retain", "batch_size": 2},
                {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 2},
            ],
            "steps": 2,
            "evaluation": {"every": 1, "max_new_tokens": 3, "suites": suites},
            "geffect": {"every": 1, "batch_size": 2},
        }
    )
    result = run(config, model=model, tokenizer=tokenizer, progress=False)
    assert result.status == "completed"
    assert (result.run_dir / "geffect.jsonl").read_text().strip()
    assert "forget/fluency" in json.loads((result.run_dir / "eval" / "after.json").read_text())
    assert len(seen) > 20  # training, reference, answer NLL, generation, suites and G-effect forwards were all checked


def test_mollm_eval_and_a_classifier_judge_feed_models_only_moved_batches(tmp_path, tokenizer, placed):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    judge_dir = tmp_path / "judge"
    judge_cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_labels=2, pad_token_id=tokenizer.pad_token_id or 2,
    )  # fmt: skip
    LlamaForSequenceClassification(judge_cfg).save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)

    model, original, seen = tiny_model(seed=1), tiny_model(), []
    _guard(model, seen)
    _guard(original, seen)
    from mollm.evaluation.judge import get_judge

    judge = get_judge(str(judge_dir), harmful_label=1)
    _guard(judge.model, seen)
    records = [QARecord("What is w1?", "It is w2."), QARecord("Where is w3?", "In w4.")]
    holdout = [QARecord("Who is w5?", "He is w6."), QARecord("When is w7?", "At w8.")]
    mia = {"name": "mia", "holdout": holdout}
    suites = {"s": {"data": records, "metrics": ["nll", "kl", "fluency", mia, "rouge_l"]}}
    out = evaluate(
        model, suites, tmp_path / "eval", cache=False, tokenizer=tokenizer, reference=Reference(original, shares_weights=False),
        max_length=32, max_new_tokens=3, progress=False,
    )  # fmt: skip
    assert set(out["suites"]["s"]) >= {"nll", "kl", "fluency", "mia", "rouge_l"}
    scores = judge.score(["What is w1?"], ["It is w2."])
    assert len(scores) == 1 and 0.0 <= scores[0] <= 1.0
    assert {"LlamaForCausalLM", "LlamaForSequenceClassification"} <= set(seen)
