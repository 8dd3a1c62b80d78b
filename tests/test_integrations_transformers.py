"""MultiObjectiveTrainer (mollm's step inside a Hugging Face Trainer) on a tiny random model: the weights of the
``mollm unlearn`` path, the Trainer's logs, checkpoints and resuming, gradient accumulation."""

from __future__ import annotations

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from mollm.aggregators import get as get_aggregator
from mollm.core.errors import ConfigError
from mollm.data import encode_record, load_dataset_spec
from mollm.engine.config import load_config
from mollm.engine.plan import Sampler, sampler_seed
from mollm.integrations.transformers import AGGREGATOR_STATE_FILE, MultiObjectiveTrainer, ObjectiveSpec
from mollm.models.tiny import tiny_model
from mollm.objectives import get as get_objective
from mollm.runs import run

FACTS = "n_people=6,seed=1,forget_fraction=0.34"  # 10 forget records, 20 retain records
MAX_LENGTH = 48


@pytest.fixture(scope="module")
def records():
    return load_dataset_spec(f"facts:forget#{FACTS}"), load_dataset_spec(f"facts:retain#{FACTS}")


def _args(tmp_path, **over):
    kw = dict(
        output_dir=str(tmp_path / "trainer"),
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        optim="adamw_torch_fused",  # what `mollm unlearn` uses on CPU and CUDA (the Trainer's default, torch >= 2.8)
        max_grad_norm=1.0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    kw.update(over)
    return TrainingArguments(**kw)


def _objectives(forget, retain, *, batch_sizes=(2, 3, 1)):
    return {
        "forget": ObjectiveSpec("ga", forget, batch_size=batch_sizes[0]),
        "kl": {"loss": "kl", "data": retain, "batch_size": batch_sizes[1]},
        "retain": ObjectiveSpec("nll", retain, batch_size=batch_sizes[2]),
    }


def _trainer(tmp_path, tokenizer, objectives, *, model=None, aggregator="ds_mgda", **args):
    return MultiObjectiveTrainer(
        model=model if model is not None else tiny_model(),
        args=_args(tmp_path, **args),
        processing_class=tokenizer,
        objectives=objectives,
        aggregator=aggregator,
        max_length=MAX_LENGTH,
    )


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the tensors both hold (a saved model leaves out the tied lm_head)."""
    keys = set(a) & set(b)
    assert keys == set(a) or keys == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in keys)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_is_a_trainer():
    assert issubclass(MultiObjectiveTrainer, Trainer)


def test_reaches_the_weights_of_mollm_unlearn(tmp_path, tokenizer, records):
    forget, retain = records
    config = load_config(
        {
            "name": "t",
            "output_dir": str(tmp_path / "{name}"),
            "max_length": MAX_LENGTH,
            "data": {"forget": f"facts:forget#{FACTS}", "retain": f"facts:retain#{FACTS}"},
            "objectives": [
                {"name": "forget", "loss": "ga", "data": "forget", "batch_size": 2},
                {"name": "kl", "loss": "kl", "data": "retain", "batch_size": 3},
                {"name": "retain", "loss": "nll", "data": "retain", "batch_size": 1},
            ],
            "aggregator": {"name": "ds_mgda"},
            "optimizer": {"name": "adamw", "lr": 1e-3},
            "schedule": {"name": "constant"},
            "grad_clip": 1.0,
            "steps": None,
            "epochs": 1,  # one pass over the 10 forget records in batches of 2: 5 steps
            "evaluation": {"before": False, "after": False, "every": 0},
        }
    )
    result = run(config, model=tiny_model(), tokenizer=tokenizer, progress=False)
    expected = load_file(str(result.run_dir / "model" / "model.safetensors"))

    seen: list[dict] = []

    class Collect(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer = _trainer(tmp_path, tokenizer, _objectives(forget, retain), num_train_epochs=1, logging_steps=2)
    trainer.add_callback(Collect())
    trainer.train()

    assert trainer.state.global_step == result.steps == 5
    got = _weights(trainer)
    assert _max_diff(got, expected) <= 1e-6
    assert _max_diff(tiny_model().state_dict(), expected) > 1e-3  # the weights did move
    for ours, theirs in zip(trainer.step_records, result.metrics, strict=True):
        assert ours["step"] == theirs["step"]
        for key in ("coefficients", "Gc", "grad_norms", "losses"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12)
        assert ours["clipped_norm"] == pytest.approx(theirs["clipped_norm"], rel=1e-9)
    assert all(r["clipped_norm"] > 1.0 for r in trainer.step_records)  # clipping was active at every step

    # Logs: every 2 steps, the step statistics averaged over the interval, next to the Trainer's own numbers.
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged][:2] == [2, 4]
    records_ = trainer.step_records
    for h in logged[:2]:
        window = records_[h["step"] - 2 : h["step"]]
        for label in ("forget", "kl", "retain"):
            for key in ("coefficients", "Gc", "grad_norms", "losses"):
                assert h[f"{key}/{label}"] == pytest.approx(sum(r[key][label] for r in window) / 2, rel=1e-9)
        assert h["cosines/forget|retain"] == pytest.approx(sum(r["cosines"]["forget|retain"] for r in window) / 2)
        assert h["conflict"] == sum(r["conflict"] for r in window) / 2
        assert h["grad_norm"] == pytest.approx(window[-1]["direction_norm"])  # ‖d‖ before clipping
        assert h["skipped_steps"] == 0
        # the reported loss is sum_i c_i L_i, averaged over the interval
        surrogate = [sum(r["coefficients"][k] * r["losses"][k] for k in r["losses"]) for r in window]
        assert h["loss"] == pytest.approx(sum(surrogate) / 2, rel=1e-5)
    assert any("coefficients/forget" in logs for logs in seen)  # what the report_to integrations receive


def test_tokenized_datasets_and_samplers_draw_the_same_batches_as_records(tmp_path, tokenizer, records):
    """Tokenized rows, a Sampler, an objective object and an aggregator object: the run of names and records."""
    forget, retain = records
    reference = _trainer(tmp_path / "a", tokenizer, _objectives(forget, retain), max_steps=3)
    reference.train()

    tokenized = datasets.Dataset.from_list([encode_record(r, tokenizer, max_length=MAX_LENGTH) for r in forget])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples = [encode_record(r, tokenizer, max_length=MAX_LENGTH) for r in retain]
    sampler = Sampler(examples, 3, sampler_seed(0, 1), pad)  # objective 1's sampler, as `mollm unlearn` builds it
    objectives = {
        "forget": ("ga", tokenized, {}),  # a tuple with (empty) options; batch size from the arguments below
        "kl": ("kl", sampler),
        "retain": ObjectiveSpec(get_objective("nll"), [dict(e) for e in examples], batch_size=1),  # plain mappings
    }
    other = _trainer(
        tmp_path / "b", tokenizer, objectives, aggregator=get_aggregator("ds_mgda"), max_steps=3, per_device_train_batch_size=2
    )
    other.train()
    assert _max_diff(_weights(other), _weights(reference)) == 0.0
    assert [r["losses"] for r in other.step_records] == [r["losses"] for r in reference.step_records]


class CountingAggregator:
    """A stateful aggregator: the forget coefficient shrinks with every call, so resuming must restore the count."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, gramian: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([1.0 / self.calls, 1.0, 1.0], dtype=gramian.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"calls": torch.tensor(self.calls)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.calls = int(state["calls"])


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True  # after the checkpoint of this step is written


def _counting_trainer(tmp_path, tokenizer, forget, retain, **args):
    return MultiObjectiveTrainer(
        model=tiny_model(),
        args=_args(tmp_path, max_steps=4, **args),
        processing_class=tokenizer,
        objectives=_objectives(forget, retain, batch_sizes=(2, 2, 2)),
        aggregator=CountingAggregator(),
        max_length=MAX_LENGTH,
    )


def test_saving_and_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path, tokenizer, records):
    forget, retain = records
    whole = _counting_trainer(tmp_path / "whole", tokenizer, forget, retain)
    whole.train()

    out = tmp_path / "resumed"
    first = _counting_trainer(out, tokenizer, forget, retain, save_strategy="steps", save_steps=2)
    first.add_callback(_StopAt(2))
    first.train()
    checkpoint = out / "trainer" / "checkpoint-2"
    assert first.state.global_step == 2 and checkpoint.is_dir()
    assert torch.load(checkpoint / AGGREGATOR_STATE_FILE)["calls"].item() == 2
    assert _max_diff(_weights(first), _weights(whole)) > 1e-4  # half-way is not the end

    # A new process would build the trainer from the original model again (the KL reference is that model).
    second = _counting_trainer(out, tokenizer, forget, retain, save_strategy="steps", save_steps=2)
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 4
    assert [r["step"] for r in second.step_records] == [3, 4]
    assert second.aggregator.calls == 4  # restored from the checkpoint, then two more steps
    assert _max_diff(_weights(second), _weights(whole)) <= 1e-6
    assert second.step_records[-1]["coefficients"] == whole.step_records[-1]["coefficients"]


def test_gradient_accumulation_is_the_step_on_the_larger_batch(tmp_path, tokenizer, records):
    forget, retain = records
    big = _trainer(tmp_path / "big", tokenizer, _objectives(forget, retain, batch_sizes=(2, 2, 4)), max_steps=3)
    big.train()
    accumulated = _trainer(
        tmp_path / "acc",
        tokenizer,
        _objectives(forget, retain, batch_sizes=(1, 1, 2)),
        max_steps=3,
        gradient_accumulation_steps=2,
    )
    accumulated.train()
    assert accumulated.state.global_step == 3
    assert len(accumulated.step_records) == 3  # one multi-objective step per optimizer step, not per micro-batch
    for a, b in zip(accumulated.step_records, big.step_records, strict=True):
        for key in ("losses", "grad_norms", "coefficients"):
            for label in a[key]:
                assert a[key][label] == pytest.approx(b[key][label], rel=1e-4, abs=1e-6), (a["step"], key, label)
    assert _max_diff(_weights(accumulated), _weights(big)) <= 1e-5
    assert _max_diff(tiny_model().state_dict(), _weights(big)) > 1e-3


def test_bad_input_is_refused_with_every_problem_named(tmp_path, tokenizer, records):
    forget, retain = records
    with pytest.raises(TypeError, match="train_dataset is not used"):
        MultiObjectiveTrainer(model=tiny_model(), args=_args(tmp_path), objectives={"f": ("ga", forget)},
                              train_dataset=[{"input_ids": [1, 2]}])
    with pytest.raises(ConfigError) as err:
        MultiObjectiveTrainer(
            model=tiny_model(),
            args=_args(tmp_path),
            objectives={"forget": ("no_such_loss", forget), "retain": ("nll", retain), "x": ("nll", [{"ids": [1]}])},
        )
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "objectives.forget" in message and "no_such_loss" in message
    assert "objectives.retain: question-answer records need a tokenizer" in message
    assert "objectives.x: example 0" in message and "'input_ids'" in message
