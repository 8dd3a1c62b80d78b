"""Benchmark (issue #9 §3, performance): mollm's training loop against a Hugging Face ``Trainer``, per-method step
cost relative to the weighted-sum step, and how the step grows with the number of objectives and the sequence length.

Groups (each written to the results JSON as soon as it finishes; a re-run skips the groups already there with the
same settings, ``--force`` redoes them, ``--only`` picks some):

* ``loop_vs_trainer`` (the headline). On the embedded SmolLM2-135M model, GradDiff (GA on TOFU forget01 + NLL on
  TOFU retain99, weights 1, 1), batch 4 of each, every sequence exactly ``--length`` tokens of real TOFU text (see
  :func:`fixed_length_records`), AdamW at lr 1e-5, gradient clipping at norm 1, constant schedule. Contenders, each
  training its own copy of the same initial weights on the same batches:

  - ``trainer``: a plain ``transformers.Trainer`` subclass whose ``compute_loss`` returns GA(forget) + NLL(retain)
    on one batch holding both parts (open-unlearning's way), with mollm's loss functions (so the loss is the same);
    everything else is the Trainer's default (its optimizer is ``TrainingArguments``' default,
    ``adamw_torch_fused`` on torch >= 2.8); logging, saving and evaluation off; sequential batches.
  - ``linear`` / ``ds_mgda``: ``mollm.runs.run`` (the real loop users run) with that aggregator; evaluation and
    checkpoints off; its per-step ``metrics.jsonl`` line and TensorBoard scalars stay on (they are the loop).
  - ``linear_unfused``: mollm's loop with ``optimizer.fused: false`` — torch's default AdamW on CPU (a loop over the
    weights), which the engine used before it switched to the fused kernel; kept to show what that change buys.
  - optional (``--contenders``): ``trainer_hf_loss`` (compute_loss returns the model's own Hugging Face loss,
    ``-model(**forget).loss + model(**retain).loss``, literally as open-unlearning; a token mean, so not the same
    numbers).

  Every loop runs whole and unmodified in its own thread; the threads take turns (only one computes at a time):
  each round gives every contender ``--steps-per-round`` optimizer steps, in an order that rotates every round,
  after ``--warmup-rounds`` untimed rounds. A step's time is the wall time of one iteration of that loop, from the
  end of the previous step (or from when the contender got its turn) to the end of this one — data collation,
  forward, backward, clipping, optimizer step, zero_grad, scheduler and the loop's own per-step bookkeeping. Model
  loading, data encoding, Trainer construction and each loop's start-up (round 0 is a warm-up) are outside it.
  Reported: median seconds/step per contender, and the medians over rounds of the per-round ratios
  ``X_vs_trainer`` = (X's mean step in the round) / (the Trainer's in the same round). After the run, the weight
  updates are compared: ``linear`` and ``trainer`` (same loss, batches, optimizer, clipping) must agree.

* ``per_method``: the objective sets of the harmful benchmark (GA; GradDiff; NPO+NLL; SimNPO+NLL; WGA+NLL;
  UCE+KL+mismatch), each as a weighted sum with mollm's ``linear`` step and as ``summed`` (one backward of Σ L_i,
  ``clip_grad_norm_``, the incumbent's weighted-sum step), and UCE+KL+mismatch with ds_mgda, mgda, upgrad, pcgrad
  too. One process, one model, the same fixed batches for every row; each row is a whole optimizer step built from
  the engine's own pieces (``MultiObjectiveStep`` with ``max_norm``, ``objective_closures``, ``step_metrics``, the
  engine's optimizer and ``_update``). Rows rotate every round. Ratios are per-round medians against the set's
  ``linear`` row (and ``summed``); tokens/s counts the trained model's input tokens.
* ``memory``: peak RSS of two steps of each ``per_method`` row, each in its own subprocess (``VmHWM`` after
  resetting it through ``/proc/self/clear_refs`` once model, reference and batches are loaded, as
  bench/step_overhead.py); reported above the loaded state and relative to the set's ``linear`` row.
* ``scaling_objectives``: GA + (m − 1) NLL objectives on distinct batches, m = 2..5, linear and ds_mgda.
* ``scaling_length``: GradDiff at sequence lengths 64, 128, 256, linear and ds_mgda.

Writes ``bench/results/perf_vs_trainer.json`` (``ratios.linear_vs_trainer``, ``ratios.ds_mgda_vs_trainer`` and
every group with its settings) and ``bench/results/perf.md``. Usage: ``make bench-perf`` or
``python bench/perf.py [--force] [--only loop_vs_trainer,per_method] [--threads N]`` (default: 1 torch thread,
see ``Settings.threads``). The default settings took 23 minutes on this 2-core machine (another job running).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results" / "perf_vs_trainer.json"
GROUPS = ("loop_vs_trainer", "per_method", "memory", "scaling_objectives", "scaling_length")
CONTENDERS = ("trainer", "linear", "ds_mgda", "linear_unfused")
OPTIONAL_CONTENDERS = ("trainer_hf_loss",)

# The objective sets of the harmful benchmark (configs/{ga,graddiff,npo,simnpo,wga,mollm}.yaml):
# label, loss, options, which fixed batch it reads (F forget, R retain, N a second retain batch, M mismatch).
SETS: dict[str, list[tuple[str, str, dict, str]]] = {
    "ga": [("forget", "ga", {}, "F")],
    "graddiff": [("forget", "ga", {}, "F"), ("retain", "nll", {}, "R")],
    "npo_nll": [("forget", "npo", {}, "F"), ("retain", "nll", {}, "R")],
    "simnpo_nll": [("forget", "simnpo", {}, "F"), ("retain", "nll", {}, "R")],
    "wga_nll": [("forget", "wga", {}, "F"), ("retain", "nll", {}, "R")],
    "uce_kl_mismatch": [("forget", "uce", {"eps": 0.5}, "F"), ("kl", "kl", {}, "N"), ("retain", "mismatch", {}, "M")],
}
METHODS = {name: ["summed", "linear"] for name in SETS}
METHODS["uce_kl_mismatch"] = ["summed", "linear", "ds_mgda", "mgda", "upgrad", "pcgrad"]


@dataclass(frozen=True)
class Settings:
    """Everything a group's numbers depend on (a cached group is reused only under the same settings)."""

    model: str = "embedded"
    batch: int = 4
    length: int = 128  # loop_vs_trainer
    steps_per_round: int = 2
    rounds: int = 8  # per-round ratios spread ±8 % on this shared machine
    warmup_rounds: int = 1
    lr: float = 1e-5
    grad_clip: float = 1.0
    seed: int = 0
    contenders: tuple[str, ...] = CONTENDERS
    method_length: int = 64  # per_method, memory and scaling_objectives
    method_rounds: int = 3
    memory_steps: int = 2
    objectives_m: tuple[int, ...] = (2, 3, 4, 5)
    lengths: tuple[int, ...] = (64, 128, 256)
    scaling_rounds: int = 3
    # One torch thread: on this shared 2-core machine, with another job running, two threads made a forward+backward
    # 3-6x slower than one (OpenMP threads waiting for a core); --threads 2 on a quiet machine.
    threads: int = 1

    def group(self, name: str) -> dict[str, Any]:
        """The settings of group ``name`` (what its cache entry is keyed on)."""
        common = {"model": self.model, "batch": self.batch, "lr": self.lr, "grad_clip": self.grad_clip,
                  "seed": self.seed, "threads": self.threads}
        if name == "loop_vs_trainer":
            keys = ("length", "steps_per_round", "rounds", "warmup_rounds", "contenders")
        elif name == "per_method":
            keys = ("method_length", "method_rounds", "warmup_rounds")
        elif name == "memory":
            keys = ("method_length", "memory_steps")
        elif name == "scaling_objectives":
            keys = ("method_length", "objectives_m", "scaling_rounds", "warmup_rounds")
        else:
            keys = ("lengths", "scaling_rounds", "warmup_rounds")
        return {**common, **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in keys}}


# ----------------------------------------------------------------------------------------------------------------
# Model and data


def load(spec: str) -> tuple[torch.nn.Module, Any]:
    """The model (float32, train mode) and tokenizer: ``embedded`` (SmolLM2-135M) or ``tiny`` (a random 2-layer Llama
    with the embedded tokenizer, for tests)."""
    from mollm.models.loading import load_model, load_tokenizer

    if spec == "tiny":
        from mollm.models.tiny import tiny_model

        model, tokenizer = tiny_model(), load_tokenizer()
    else:
        model, tokenizer = load_model(spec)
    model.train()
    return model, tokenizer


def fixed_length_records(records: Sequence[Any], tokenizer: Any, length: int, *, fmt: Any = None) -> list[Any]:
    """Each TOFU record made to encode (with mollm's ``encode_record``, plain template) to exactly ``length`` tokens.

    Real text, real answers: a record shorter than ``length`` gets a stretch of the other records' text (questions
    and answers of the same file) before its question, just enough to fill the sequence with its whole answer at the
    end; a longer one has its answer's end cut, as ``max_length`` cuts it. Records whose prompt alone does not fit
    are left out. So every batch is ``batch x length`` with no padding, and the loss reads the records' answers.
    """
    from mollm.data.encode import PromptFormat, encode_record
    from mollm.data.records import QARecord

    fmt = fmt or PromptFormat()
    text = " ".join(f"{r.question} {r.answer}" for r in records)
    ctx = tokenizer(text, add_special_tokens=False)["input_ids"]

    def encoded(question: str, answer: str) -> tuple[int, int]:
        """Untruncated length and prompt length."""
        e = encode_record(QARecord(question, answer), tokenizer, fmt, max_length=1 << 30)
        return len(e["input_ids"]), sum(1 for x in e["labels"] if x == -100)

    def fits(total: int, prompt: int) -> bool:
        return prompt < length <= total  # truncation to `length` then keeps >= 1 answer token

    out = []
    for j, r in enumerate(records):
        total, prompt = encoded(r.question, r.answer)
        if prompt >= length:
            continue
        if fits(total, prompt):
            out.append(QARecord(r.question, r.answer, source=r.source))
            continue
        k = length - total  # context tokens to add (re-tokenisation may shift the count a little: adjust)
        for _ in range(12):
            start = (j * 7919) % max(1, len(ctx) - k)
            question = tokenizer.decode(ctx[start : start + k]).strip() + "\n" + r.question
            total, prompt = encoded(question, r.answer)
            if fits(total, prompt):
                out.append(QARecord(question, r.answer, source=r.source))
                break
            k = max(1, k - (prompt - length + 1) if prompt >= length else k + (length - total))
    if not out:
        raise ValueError(f"no record could be made {length} tokens long")
    return out


def tofu(tokenizer: Any, length: int, *, n_retain: int = 200) -> tuple[list[Any], list[Any]]:
    """TOFU forget01 and the first ``n_retain`` records of retain99, each exactly ``length`` tokens."""
    from mollm.data.readers import read_tofu

    forget = read_tofu(DATA / "tofu" / "forget01.json")
    retain = read_tofu(DATA / "tofu" / "retain99.json", limit=n_retain)
    return fixed_length_records(forget, tokenizer, length), fixed_length_records(retain, tokenizer, length)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# Group 1: the training loops against the Trainer, in turns


class Turns:
    """Threads that take turns: the main thread hands the turn to one contender and waits until it hands it back."""

    MAIN = "__main__"

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._turn = self.MAIN
        self.errors: dict[str, BaseException] = {}

        self.finished: set[str] = set()

    def give(self, name: str) -> None:
        with self._cv:
            if name not in self.finished:
                self._turn = name
                self._cv.notify_all()
                self._cv.wait_for(lambda: self._turn == self.MAIN)
        if name in self.errors:
            raise RuntimeError(f"contender {name} failed") from self.errors[name]

    def finish(self, name: str) -> None:
        """A contender's thread ends: the turn goes back for good."""
        with self._cv:
            self.finished.add(name)
            self._turn = self.MAIN
            self._cv.notify_all()

    def wait(self, name: str) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._turn == name)

    def back(self, name: str) -> None:
        with self._cv:
            self._turn = self.MAIN
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._turn == name)


class Clock:
    """One contender's step times: ``start()`` when it (re)gains its turn, ``stop()`` at the end of each step."""

    def __init__(self, name: str, turns: Turns, steps_per_round: int) -> None:
        self.name, self.turns, self.k = name, turns, steps_per_round
        self.steps: list[float] = []
        self.parts: list[dict[str, float]] = []
        self._t = time.perf_counter()
        self._mark: dict[str, float] = {}

    def start(self) -> None:
        self._t = time.perf_counter()
        self._mark = {}

    def mark(self, key: str, seconds: float | None = None) -> None:
        """Add a part of the current step: ``seconds`` if given, else the time since the last mark or start."""
        now = time.perf_counter()
        if seconds is None:
            seconds = now - self._mark.get("_last", self._t)
        self._mark[key] = self._mark.get(key, 0.0) + seconds
        self._mark["_last"] = now

    def stop(self) -> None:
        now = time.perf_counter()
        self.steps.append(now - self._t)
        parts = {k: v for k, v in self._mark.items() if not k.startswith("_")}
        parts["other"] = self.steps[-1] - sum(parts.values())  # the rest of the loop iteration
        self.parts.append(parts)
        if len(self.steps) % self.k == 0:
            self.turns.back(self.name)  # the round's steps are done: wait for the next turn
            self.start()
        else:
            self._t, self._mark = now, {}


def _optimizer_hooks(clocks: dict[str, Clock]) -> list[Any]:
    """Global optimizer-step hooks that time every contender's ``optimizer.step()`` (by thread name)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    started: dict[str, float] = {}

    def pre(optimizer, args, kwargs):
        started[threading.current_thread().name] = time.perf_counter()

    def post(optimizer, args, kwargs):
        name = threading.current_thread().name
        if name in clocks and name in started:
            clocks[name].mark("optimizer", time.perf_counter() - started.pop(name))

    return [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]


def _run_config(settings: Settings, aggregator: str, forget: list, retain: list, work: Path, total: int,
                *, fused: bool | None = None):
    from mollm.engine.config import load_config

    optimizer: dict[str, Any] = {"name": "adamw", "lr": settings.lr}
    if fused is not None:
        optimizer["fused"] = fused
    return load_config({
        "name": f"perf_{aggregator}" + ("" if fused is None else f"_fused{fused}"),
        "output_dir": str(work / "{name}"),
        "overwrite": True,
        "seed": settings.seed,
        "max_length": settings.length,
        "format": {"kind": "plain"},
        "data": {"forget": [{"question": r.question, "answer": r.answer} for r in forget],
                 "retain": [{"question": r.question, "answer": r.answer} for r in retain]},
        "objectives": [
            {"name": "forget", "loss": "ga", "data": "forget", "batch_size": settings.batch},
            {"name": "retain", "loss": "nll", "data": "retain", "batch_size": settings.batch},
        ],
        "aggregator": {"name": aggregator},
        "optimizer": optimizer,
        "schedule": {"name": "constant"},
        "steps": total,
        "grad_clip": settings.grad_clip,
        "checkpoint_every": 0,
        "evaluation": {"before": False, "after": False, "every": 0},
    })


def _step_batches(config, tokenizer, total: int) -> list[dict[str, dict[str, torch.Tensor]]]:
    """The batches mollm's loop draws at steps 1..total (its samplers, from the same config): what the Trainer gets."""
    from mollm.engine.plan import RunHooks, build_plan

    plan = build_plan(config, RunHooks(), tokenizer=tokenizer, model_given=True)
    forget, retain = plan.samplers
    return [{"forget": forget.batch(s), "retain": retain.batch(s)} for s in range(total)]


class _Rows(torch.utils.data.Dataset):
    """Per-example items ``{"forget": example, "retain": example}`` in the order of the step batches (open-unlearning's
    ForgetRetainDataset shape); a sequential sampler and :func:`_collator` rebuild exactly those batches."""

    def __init__(self, steps: list[dict[str, dict[str, torch.Tensor]]]) -> None:
        self.items = []
        for b in steps:
            for i in range(b["forget"]["input_ids"].shape[0]):
                self.items.append({part: {k: v[i][b[part]["attention_mask"][i].bool()].tolist()
                                          for k, v in b[part].items()} for part in ("forget", "retain")})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _collator(pad_id: int) -> Callable[[list[dict]], dict]:
    from mollm.data.encode import collate

    def collate_parts(rows: list[dict]) -> dict:
        return {part: collate([r[part] for r in rows], pad_id) for part in ("forget", "retain")}

    return collate_parts


def make_trainer(model: torch.nn.Module, tokenizer: Any, steps: list[dict], settings: Settings, out: Path,
                 *, hf_loss: bool = False):
    """The incumbent: a plain ``Trainer`` whose ``compute_loss`` returns the summed GradDiff loss."""
    from transformers import Trainer, TrainingArguments

    from mollm.objectives import get as get_objective

    ga, nll = get_objective("ga"), get_objective("nll")

    class GradDiffTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            forget, retain = inputs["forget"], inputs["retain"]
            if hf_loss:  # open-unlearning literally: the model's own (token-mean) loss
                loss = -model(**forget).loss + model(**retain).loss
            else:  # the loss mollm's objectives define (per-answer mean, then batch mean)
                loss = ga(model, forget) + nll(model, retain)
            return (loss, None) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=settings.batch,
        max_steps=len(steps),
        learning_rate=settings.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=settings.grad_clip,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=settings.seed,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return GradDiffTrainer(model=model, args=args, train_dataset=_Rows(steps), data_collator=_collator(pad),
                           processing_class=tokenizer)


def _trainer_worker(trainer, clock: Clock, turns: Turns) -> Callable[[], None]:
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            clock.mark("data")  # the loop's data fetch and collation since the previous step

        def on_pre_optimizer_step(self, args, state, control, **kw):
            clock.mark("forward_backward_clip")

        def on_step_end(self, args, state, control, **kw):
            clock.stop()

    trainer.add_callback(Timing())

    def body() -> None:
        turns.wait(clock.name)
        clock.start()
        trainer.train()

    return body


def _mollm_worker(config, model, tokenizer, clock: Clock, turns: Turns) -> Callable[[], None]:
    from mollm.runs import run

    def on_step(step: int, record: dict) -> None:
        clock.mark("step_fn", record.get("seconds", 0.0))  # MultiObjectiveStep: forward, backward, Gramian, combine
        clock.stop()

    def body() -> None:
        turns.wait(clock.name)
        clock.start()
        run(config, model=model, tokenizer=tokenizer, progress=False, on_step=on_step)

    return body


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    from mollm.engine.step import trainable_parameters

    return [p.detach() for p in trainable_parameters(model)]


def _agreement(final_a: list[torch.Tensor], final_b: list[torch.Tensor], initial: list[torch.Tensor]) -> dict:
    """How two weight updates a = A − initial and b = B − initial compare: cosine, ‖a − b‖ / ‖b‖ and ‖a‖ / ‖b‖
    (in float64, one parameter at a time)."""
    ab = aa = bb = dd = 0.0
    for wa, wb, w0 in zip(final_a, final_b, initial, strict=True):
        a, b = (wa.double() - w0.double()), (wb.double() - w0.double())
        ab += float(a.flatten() @ b.flatten())
        aa += float(a.square().sum())
        bb += float(b.square().sum())
        dd += float((a - b).square().sum())
    na, nb = math.sqrt(aa), math.sqrt(bb)
    return {
        "cosine": ab / (na * nb) if na and nb else float("nan"),
        "relative_distance": math.sqrt(dd) / nb if nb else float("nan"),
        "norm_ratio": na / nb if nb else float("nan"),
        "update_norm": na,
    }


def loop_vs_trainer(model: torch.nn.Module, tokenizer: Any, settings: Settings, work: Path) -> dict[str, Any]:
    """Group ``loop_vs_trainer`` (see the module docstring); ``model`` is copied for every contender."""
    contenders = list(settings.contenders)
    total = (settings.warmup_rounds + settings.rounds) * settings.steps_per_round
    forget, retain = tofu(tokenizer, settings.length)
    configs = {"linear": _run_config(settings, "linear", forget, retain, work, total),
               "ds_mgda": _run_config(settings, "ds_mgda", forget, retain, work, total)}
    if "linear_unfused" in contenders:
        configs["linear_unfused"] = _run_config(settings, "linear", forget, retain, work, total, fused=False)
    steps = _step_batches(configs["linear"], tokenizer, total)
    initial = [w.clone() for w in _weights(model)]

    turns = Turns()
    clocks = {name: Clock(name, turns, settings.steps_per_round) for name in contenders}
    models: dict[str, torch.nn.Module] = {}
    bodies: dict[str, Callable[[], None]] = {}
    trainer_optim = None
    for name in contenders:
        models[name] = copy.deepcopy(model).train()
        if name.startswith("trainer"):
            trainer = make_trainer(models[name], tokenizer, steps, settings, work / name,
                                   hf_loss=name == "trainer_hf_loss")
            trainer_optim = getattr(trainer.args.optim, "value", str(trainer.args.optim))
            bodies[name] = _trainer_worker(trainer, clocks[name], turns)
        else:
            bodies[name] = _mollm_worker(configs[name], models[name], tokenizer, clocks[name], turns)

    def guarded(name: str) -> Callable[[], None]:
        def target() -> None:
            try:
                bodies[name]()
            except BaseException as err:  # noqa: BLE001 (re-raised by the main thread)
                turns.errors[name] = err
            finally:
                turns.finish(name)

        return target

    threads = {name: threading.Thread(target=guarded(name), name=name, daemon=True) for name in contenders}
    hooks = _optimizer_hooks(clocks)
    orders = []
    try:
        for t in threads.values():
            t.start()
        for r in range(settings.warmup_rounds + settings.rounds):
            order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
            orders.append(order)
            for name in order:
                turns.give(name)
                if len(clocks[name].steps) != (r + 1) * settings.steps_per_round:
                    raise RuntimeError(f"{name} ended after {len(clocks[name].steps)} steps, before round {r} did")
                s = clocks[name].steps[-settings.steps_per_round:]
                print(f"round {r} {name:16s} " + " ".join(f"{x:6.2f}" for x in s) + " s/step", file=sys.stderr,
                      flush=True)
        for name in contenders:  # let every loop finish (final save etc.), untimed
            turns.give(name)
            threads[name].join()
    finally:
        for h in hooks:
            h.remove()

    skip = settings.warmup_rounds * settings.steps_per_round
    k = settings.steps_per_round
    timed = {n: clocks[n].steps[skip:] for n in contenders}
    per_round = {n: [statistics.fmean(v[i:i + k]) for i in range(0, len(v), k)] for n, v in timed.items()}
    tokens = 2 * settings.batch * settings.length
    out: dict[str, Any] = {
        "what": "seconds per whole optimizer step of each training loop (see bench/perf.py), same model, batches, "
                "loss, optimizer settings; paired rounds in rotating order",
        "median_seconds_per_step": {n: _median(v) for n, v in timed.items()},
        "tokens_per_second": {n: tokens / _median(v) for n, v in timed.items()},
        "tokens_per_step": tokens,
        "paired_ratios_median_of_rounds": {},
        "ratio_of_medians": {},
        "per_round_seconds": per_round,
        "seconds": timed,
        "median_parts_seconds": {
            n: {key: _median([p.get(key, 0.0) for p in clocks[n].parts[skip:]])
                for key in sorted({k for p in clocks[n].parts[skip:] for k in p})}
            for n in contenders
        },
        "orders": orders,
        "trainer_optim": trainer_optim,
        "records": {"forget": len(forget), "retain": len(retain)},
    }
    if "trainer" in contenders:
        for n in contenders:
            if n != "trainer":
                ratios = [a / b for a, b in zip(per_round[n], per_round["trainer"])]
                out["paired_ratios_median_of_rounds"][f"{n}_vs_trainer"] = _median(ratios)
                out["ratio_of_medians"][f"{n}_vs_trainer"] = (
                    out["median_seconds_per_step"][n] / out["median_seconds_per_step"]["trainer"])
                out.setdefault("per_round_ratios", {})[f"{n}_vs_trainer"] = ratios
        final = {n: _weights(m) for n, m in models.items()}
        out["weights"] = {
            "what": "weight updates after all steps (final − initial), compared with the Trainer's",
            **{f"{n}_vs_trainer": _agreement(final[n], final["trainer"], initial)
               for n in contenders if n != "trainer"},
        }
    return out


def ratio_interval(ratios: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Geometric mean of paired per-round ratios and its ``level`` t-interval (on log ratios): whether a contender
    is faster or slower than the Trainer is resolved only when the interval excludes 1."""
    from scipy import stats

    logs = [math.log(x) for x in ratios]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def _interval_text(per_round: dict[str, list[float]]) -> str:
    parts = []
    for k, v in per_round.items():
        g, lo, hi = ratio_interval(v)
        parts.append(f"{k} {g:.3f} [{lo:.3f}, {hi:.3f}]")
    return " Geometric mean of the per-round ratios with its 95 % t-interval: " + "; ".join(parts) + "." if parts else ""


# ----------------------------------------------------------------------------------------------------------------
# Groups 2-4: one process, the engine's step pieces on fixed batches


def _engine_config(settings: Settings) -> SimpleNamespace:
    """What the engine's ``_optimizer`` / ``_scheduler`` / ``_update`` read from a RunConfig."""
    from mollm.engine.config import OptimizerConfig, ScheduleConfig

    return SimpleNamespace(optimizer=OptimizerConfig(name="adamw", lr=settings.lr), schedule=ScheduleConfig(),
                           grad_clip=settings.grad_clip)


class Bench:
    """One model, its reference, fixed batches, the engine's optimizer, and one ``MultiObjectiveStep`` per m."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, settings: Settings, length: int,
                 *, reference: bool = True, n_batches: int = 1) -> None:
        import random

        from mollm.data.encode import collate, encode_record
        from mollm.engine.run import _optimizer, _scheduler
        from mollm.engine.step import trainable_parameters
        from mollm.models.reference import Reference
        from mollm.objectives import get as get_objective

        self.model, self.settings, self.length = model, settings, length
        self.model.train()
        self.params = trainable_parameters(model)
        self.trainable_bytes = sum(p.numel() * p.element_size() for p in self.params)
        self.reference = Reference.from_model(model) if reference else None
        forget, retain = tofu(tokenizer, length)
        mismatch = get_objective("mismatch").prepare_records(forget, normal=retain, rng=random.Random(settings.seed))
        mismatch = fixed_length_records(mismatch, tokenizer, length)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        b = settings.batch

        def batch(records: list, i: int) -> dict[str, torch.Tensor]:
            rows = [records[(i * b + j) % len(records)] for j in range(b)]
            return collate([encode_record(r, tokenizer, max_length=length) for r in rows], pad)

        self.batches = {"F": batch(forget, 0), "R": batch(retain, 0), "N": batch(retain, 1), "M": batch(mismatch, 0)}
        for i in range(n_batches):  # distinct retain batches for the m-scaling
            self.batches[f"R{i}"] = batch(retain, 2 + i)
        for key, value in self.batches.items():
            assert value["input_ids"].shape == (b, length), (key, value["input_ids"].shape)
        self.config = _engine_config(settings)
        self.optimizer = _optimizer(self.params, self.config)
        self.scheduler = _scheduler(self.optimizer, self.config, 10**6)
        self._steps: dict[int, Any] = {}
        self._objectives: dict[tuple, Any] = {}
        self._aggregators: dict[tuple, Any] = {}

    def objective(self, loss: str, options: dict) -> Any:
        from mollm.objectives import get as get_objective

        key = (loss, tuple(sorted(options.items())))
        if key not in self._objectives:
            self._objectives[key] = get_objective(loss, **options)
        return self._objectives[key]

    def step(self, objectives: list[tuple[str, str, dict, str]], method: str) -> tuple[float, dict[str, Any]]:
        """One whole optimizer step of ``method`` on ``objectives``; wall seconds and the step's timings."""
        from mollm.aggregators import get as get_aggregator
        from mollm.engine.metrics_log import step_metrics
        from mollm.engine.run import _update
        from mollm.engine.step import MultiObjectiveStep, objective_closures, summed_backward

        labels = [o[0] for o in objectives]
        fns = [self.objective(o[1], o[2]) for o in objectives]
        batches = [self.batches[o[3]] for o in objectives]
        m = len(objectives)
        if method != "summed" and m not in self._steps:  # as the engine builds it (one process: no reduction)
            self._steps[m] = MultiObjectiveStep(self.params, get_aggregator("linear"), names=labels,
                                                max_norm=self.settings.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        closures = objective_closures(self.model, fns, batches, self.reference)
        if method == "summed":  # the incumbent's weighted sum: one backward of Σ L_i, clip_grad_norm_, step
            stats = summed_backward(self.params, closures, names=labels)
            t_fb = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
            t_clip = time.perf_counter()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            end = time.perf_counter()
            parts = {"forward_backward": t_fb - start, "clip": t_clip - t_fb, "optimizer": end - t_clip}
        else:
            step_fn = self._steps[m]
            step_fn.names = labels
            key = (method, tuple(labels), m)  # one aggregator per row, keeping its state across steps as a run does
            if key not in self._aggregators:
                self._aggregators[key] = get_aggregator(method, **({"seed": 0} if method == "pcgrad" else {}))
            step_fn.aggregator = self._aggregators[key]
            stats = step_fn(closures)
            t_step = time.perf_counter()
            record = {"step": 0, "lr": self.scheduler.get_last_lr()[0], **step_metrics(stats)}
            _update(stats, record, self.optimizer, self.scheduler, self.config)
            end = time.perf_counter()
            parts = {**stats.timings, "optimizer_and_record": end - t_step}
        if not stats.finite:
            raise RuntimeError(f"{method}: non-finite step: {stats.reason}")
        return end - start, parts

    def tokens(self, objectives: list) -> int:
        return len(objectives) * self.settings.batch * self.length


def _rounds(rows: list[str], run: Callable[[str], tuple[float, dict]], rounds: int, warmup: int,
            label: str) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Paired rounds over ``rows`` in rotating order; the warm-up rounds are dropped."""
    times: dict[str, list[float]] = {r: [] for r in rows}
    parts: dict[str, list[dict]] = {r: [] for r in rows}
    for rnd in range(warmup + rounds):
        shift = rnd % len(rows)
        for row in rows[shift:] + rows[:shift]:
            elapsed, p = run(row)
            print(f"{label} round {rnd} {row:28s} {elapsed:7.2f} s", file=sys.stderr, flush=True)
            if rnd >= warmup:
                times[row].append(elapsed)
                parts[row].append(p)
    return times, parts


def _paired(times: dict[str, list[float]], a: str, b: str) -> float:
    return _median([x / y for x, y in zip(times[a], times[b])])


def _median_parts(parts: list[dict]) -> dict[str, float]:
    keys = sorted({k for p in parts for k in p})
    return {k: _median([p.get(k, 0.0) for p in parts]) for k in keys}


def per_method(model: torch.nn.Module, tokenizer: Any, settings: Settings) -> dict[str, Any]:
    bench = Bench(model, tokenizer, settings, settings.method_length)
    rows = [f"{s}/{m}" for s in SETS for m in METHODS[s]]

    def run(row: str) -> tuple[float, dict]:
        s, m = row.split("/")
        return bench.step(SETS[s], m)

    times, parts = _rounds(rows, run, settings.method_rounds, settings.warmup_rounds, "per_method")
    table = {}
    for row in rows:
        s, m = row.split("/")
        med = _median(times[row])
        table[row] = {
            "objectives": [o[1] for o in SETS[s]],
            "method": m,
            "median_seconds_per_step": med,
            "tokens_per_step": bench.tokens(SETS[s]),
            "tokens_per_second": bench.tokens(SETS[s]) / med,
            "vs_linear": _paired(times, row, f"{s}/linear"),
            "vs_summed": _paired(times, row, f"{s}/summed"),
            "median_parts_seconds": _median_parts(parts[row]),
            "seconds": times[row],
        }
    return {
        "what": "whole optimizer step (engine pieces) per objective set and method, same fixed batches; vs_linear / "
                "vs_summed are per-round ratio medians against the set's linear / summed row",
        "batch": [settings.batch, settings.method_length],
        "trainable_bytes": bench.trainable_bytes,
        "rows": table,
    }


def scaling_objectives(model: torch.nn.Module, tokenizer: Any, settings: Settings) -> dict[str, Any]:
    top = max(settings.objectives_m)
    bench = Bench(model, tokenizer, settings, settings.method_length, reference=False, n_batches=top - 1)

    def objectives(m: int) -> list:
        return [("forget", "ga", {}, "F")] + [(f"retain{i}", "nll", {}, f"R{i}") for i in range(m - 1)]

    rows = [f"m{m}/{a}" for m in settings.objectives_m for a in ("linear", "ds_mgda")]

    def run(row: str) -> tuple[float, dict]:
        m, a = row.split("/")
        return bench.step(objectives(int(m[1:])), a)

    times, parts = _rounds(rows, run, settings.scaling_rounds, settings.warmup_rounds, "scaling_objectives")
    m0 = settings.objectives_m[0]
    table = {}
    for row in rows:
        m, a = row.split("/")
        med = _median(times[row])
        table[row] = {
            "m": int(m[1:]),
            "aggregator": a,
            "median_seconds_per_step": med,
            "tokens_per_second": bench.tokens(objectives(int(m[1:]))) / med,
            "vs_same_m_linear": _paired(times, row, f"{m}/linear"),
            f"vs_m{m0}_same_aggregator": _paired(times, row, f"m{m0}/{a}"),
            "median_parts_seconds": _median_parts(parts[row]),
            "seconds": times[row],
        }
    return {"what": "GA on forget + (m−1) NLL objectives on distinct retain batches", "batch":
            [settings.batch, settings.method_length], "rows": table}


def scaling_length(model: torch.nn.Module, tokenizer: Any, settings: Settings) -> dict[str, Any]:
    benches = {L: Bench(model, tokenizer, settings, L, reference=False) for L in settings.lengths}
    first = benches[settings.lengths[0]]
    for b in benches.values():  # one optimizer and one gradient buffer for all lengths (AdamW state is lazy)
        b.optimizer, b.scheduler = first.optimizer, first.scheduler
        b._steps, b._aggregators = first._steps, first._aggregators
    rows = [f"L{L}/{a}" for L in settings.lengths for a in ("linear", "ds_mgda")]
    graddiff = SETS["graddiff"]

    def run(row: str) -> tuple[float, dict]:
        L, a = row.split("/")
        return benches[int(L[1:])].step(graddiff, a)

    times, parts = _rounds(rows, run, settings.scaling_rounds, settings.warmup_rounds, "scaling_length")
    L0 = settings.lengths[0]
    table = {}
    for row in rows:
        L, a = row.split("/")
        med = _median(times[row])
        table[row] = {
            "length": int(L[1:]),
            "aggregator": a,
            "median_seconds_per_step": med,
            "tokens_per_second": benches[int(L[1:])].tokens(graddiff) / med,
            "vs_same_length_linear": _paired(times, row, f"{L}/linear"),
            f"vs_L{L0}_same_aggregator": _paired(times, row, f"L{L0}/{a}"),
            "median_parts_seconds": _median_parts(parts[row]),
            "seconds": times[row],
        }
    return {"what": "GradDiff (GA + NLL), batch 4 of each, at several sequence lengths (the same model and optimizer)",
            "rows": table}


# ----------------------------------------------------------------------------------------------------------------
# Memory, in subprocesses


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith(key)).split()[1])


def memory_child(row: str, settings: Settings) -> dict[str, Any]:
    """Subprocess body: peak RSS of ``memory_steps`` steps of ``row`` ("set/method") above the loaded state."""
    torch.manual_seed(settings.seed)
    model, tokenizer = load(settings.model)
    s, m = row.split("/")
    needs_ref = any(o[1] in ("kl", "npo") for o in SETS[s])
    bench = Bench(model, tokenizer, settings, settings.method_length, reference=needs_ref)
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS (Linux >= 4.0)
        fh.write("5")
    base = _status_kib("VmRSS")
    for _ in range(settings.memory_steps):
        bench.step(SETS[s], m)
    peak = _status_kib("VmHWM")
    return {"row": row, "rss_loaded_bytes": base * 1024, "peak_bytes": peak * 1024,
            "peak_above_loaded_bytes": (peak - base) * 1024, "trainable_bytes": bench.trainable_bytes}


def memory(settings: Settings, rows: list[str] | None = None) -> dict[str, Any]:
    rows = rows or [f"{s}/{m}" for s in SETS for m in METHODS[s]]
    out: dict[str, Any] = {}
    for row in rows:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", row, "--settings-json", json.dumps(asdict(settings))],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory subprocess for {row} failed:\n{proc.stderr[-3000:]}")
        out[row] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"memory {row:28s} +{out[row]['peak_above_loaded_bytes'] / 2**20:8.0f} MiB", file=sys.stderr, flush=True)
    for row, v in out.items():
        base = out.get(f"{row.split('/')[0]}/linear")
        if base:
            v["extra_vs_linear_bytes"] = v["peak_above_loaded_bytes"] - base["peak_above_loaded_bytes"]
            v["vs_linear"] = v["peak_above_loaded_bytes"] / base["peak_above_loaded_bytes"]
    return {"what": "per-row subprocess; VmHWM after resetting it via /proc/self/clear_refs once model, reference and "
                    "batches are loaded; peak over memory_steps whole steps (AdamW state included: allocated at the "
                    "first step)", "batch": [settings.batch, settings.method_length], "rows": out}


# ----------------------------------------------------------------------------------------------------------------
# Results


def machine() -> dict[str, Any]:
    import transformers

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Top-level ``ratios`` and ``targets`` from the groups present."""
    groups = results.get("groups", {})
    loop = groups.get("loop_vs_trainer", {}).get("result")
    if loop and loop.get("paired_ratios_median_of_rounds"):
        ratios = loop["paired_ratios_median_of_rounds"]
        results["ratios"] = dict(ratios)
        results["targets"] = {
            "linear_vs_trainer <= 1.00": ratios.get("linear_vs_trainer", math.inf) <= 1.0,
            "ds_mgda_vs_trainer <= 1.00": ratios.get("ds_mgda_vs_trainer", math.inf) <= 1.0,
        }
        w = loop.get("weights", {}).get("linear_vs_trainer")
        if w:
            results["targets"]["linear reaches the Trainer's weights (relative distance < 1e-3)"] = (
                w["relative_distance"] < 1e-3)
    return results


def markdown(results: dict[str, Any]) -> str:
    g = results.get("groups", {})
    lines = ["# Performance (issue #9 §3)", "",
             ("Regenerate: `make bench-perf` (`python bench/perf.py`; cached groups are skipped, `--force` redoes "
              "them). Numbers: bench/results/perf_vs_trainer.json."), ""]
    m = results.get("machine", {})
    lines += [(f"Machine: {m.get('cpu_count')} CPU cores, torch {m.get('torch')} ({m.get('torch_threads')} threads), "
               f"transformers {m.get('transformers')}; shared with other jobs, so ratios come from paired rounds."), ""]
    if "loop_vs_trainer" in g:
        r, s = g["loop_vs_trainer"]["result"], g["loop_vs_trainer"]["settings"]
        lines += ["## Training loop vs a Hugging Face Trainer (GradDiff)", "",
                  (f"Model `{s['model']}`, batch {s['batch']} forget + {s['batch']} retain, {s['length']} tokens each "
                   f"(TOFU), AdamW lr {s['lr']}, clip {s['grad_clip']}; {s['rounds']} timed rounds of "
                   f"{s['steps_per_round']} steps per contender after {s['warmup_rounds']} warm-up round(s). "
                   f"Trainer optimizer: `{r.get('trainer_optim')}`."), "",
                  ("| contender | median s/step | tokens/s | ratio vs Trainer (paired) | update vs Trainer's: cosine, "
                   "rel. distance |"),
                  "|---|---|---|---|---|"]
        for n, sec in r["median_seconds_per_step"].items():
            ratio = r["paired_ratios_median_of_rounds"].get(f"{n}_vs_trainer")
            w = r.get("weights", {}).get(f"{n}_vs_trainer")
            wtxt = f"{w['cosine']:.6f}, {w['relative_distance']:.2e}" if w else "—"
            lines.append(f"| {n} | {sec:.2f} | {r['tokens_per_second'][n]:.0f} | "
                         f"{'1 (reference)' if ratio is None else f'{ratio:.3f}'} | {wtxt} |")
        lines += ["", ("`linear_unfused`: mollm's loop with `optimizer.fused: false` (torch's per-weight AdamW loop, "
                       "the engine's optimizer before it switched to the fused kernel). A step is one whole iteration "
                       "of each loop; ratios are medians over rounds of (contender's mean step) / (Trainer's) in "
                       "the same round: " + "; ".join(f"{k} {[round(x, 3) for x in v]}"
                                                      for k, v in r.get("per_round_ratios", {}).items()) + "."
                       + _interval_text(r.get("per_round_ratios", {}))),
                  "", "Median parts of a step (s): " + "; ".join(
            f"{n}: " + ", ".join(f"{k} {v:.2f}" for k, v in p.items()) for n, p in r["median_parts_seconds"].items()),
            ""]
    if "per_method" in g:
        r = g["per_method"]["result"]
        mem = g.get("memory", {}).get("result", {}).get("rows", {})
        lines += ["## Per method, relative to the weighted-sum step", "",
                  (f"Batch {r['batch'][0]} x {r['batch'][1]} tokens per objective, the same fixed batches; "
                   "`summed` = one backward of Σ L_i + `clip_grad_norm_` (the incumbent's weighted sum), `linear` = "
                   "mollm's step with weights 1. Ratios: per-round medians. Peak: RSS above the loaded model, two "
                   "steps, own subprocess."), "",
                  "| objectives | method | s/step | tokens/s | vs linear | vs summed | peak MiB | peak vs linear |",
                  "|---|---|---|---|---|---|---|---|"]
        for row, v in r["rows"].items():
            mm = mem.get(row)
            peak = f"{mm['peak_above_loaded_bytes'] / 2**20:.0f}" if mm else "—"
            pvl = f"{mm['vs_linear']:.2f}" if mm and "vs_linear" in mm else "—"
            lines.append(f"| {'+'.join(v['objectives'])} | {v['method']} | {v['median_seconds_per_step']:.2f} | "
                         f"{v['tokens_per_second']:.0f} | {v['vs_linear']:.3f} | {v['vs_summed']:.3f} | {peak} | "
                         f"{pvl} |")
        lines.append("")
    if "scaling_objectives" in g:
        r = g["scaling_objectives"]["result"]
        lines += ["## Step time vs number of objectives", "", f"{r['what']}; batch {r['batch'][0]} x {r['batch'][1]}.",
                  "", "| m | aggregator | s/step | tokens/s | vs linear (same m) | vs smallest m |",
                  "|---|---|---|---|---|---|"]
        for v in r["rows"].values():
            rel = next(val for k, val in v.items() if k.startswith("vs_m"))
            lines.append(f"| {v['m']} | {v['aggregator']} | {v['median_seconds_per_step']:.2f} | "
                         f"{v['tokens_per_second']:.0f} | {v['vs_same_m_linear']:.3f} | {rel:.2f} |")
        lines.append("")
    if "scaling_length" in g:
        r = g["scaling_length"]["result"]
        lines += ["## Step time vs sequence length", "", r["what"] + ".", "",
                  "| length | aggregator | s/step | tokens/s | vs linear (same length) | vs shortest |",
                  "|---|---|---|---|---|---|"]
        for v in r["rows"].values():
            rel = next(val for k, val in v.items() if k.startswith("vs_L"))
            lines.append(f"| {v['length']} | {v['aggregator']} | {v['median_seconds_per_step']:.2f} | "
                         f"{v['tokens_per_second']:.0f} | {v['vs_same_length_linear']:.3f} | {rel:.2f} |")
        lines.append("")
    return "\n".join(lines)


def run_groups(settings: Settings, out: Path, *, only: Sequence[str] = GROUPS, force: bool = False,
               work: Path | None = None, model_factory: Callable[[], tuple[torch.nn.Module, Any]] | None = None
               ) -> dict[str, Any]:
    """Run the groups in ``only`` not already in ``out`` with the same settings, writing ``out`` after each."""
    from mollm.core.atomic import atomic_write_json, atomic_write_text

    torch.set_num_threads(settings.threads)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("benchmark", "perf")
    results.setdefault("groups", {})
    results["settings"] = asdict(settings)
    results.setdefault("machine", machine())
    factory = model_factory or (lambda: load(settings.model))
    own_work = work is None
    work = work or Path(tempfile.mkdtemp(prefix="mollm_perf_"))
    try:
        for name in only:
            cached = results["groups"].get(name)
            if cached and not force and cached.get("settings") == settings.group(name):
                print(f"{name}: cached, skipped (--force to redo)", file=sys.stderr)
                continue
            torch.manual_seed(settings.seed)
            results["machine"] = machine()  # of the latest group run (each group also keeps its end load average)
            t0 = time.time()
            if name == "memory":
                result = memory(settings)
            else:
                model, tokenizer = factory()
                if name == "loop_vs_trainer":
                    result = loop_vs_trainer(model, tokenizer, settings, work / name)
                else:
                    result = {"per_method": per_method, "scaling_objectives": scaling_objectives,
                              "scaling_length": scaling_length}[name](model, tokenizer, settings)
                del model, tokenizer
            gc.collect()  # the Trainer and accelerate hold reference cycles: free this group's models now
            results["groups"][name] = {"settings": settings.group(name), "result": result,
                                       "wall_seconds": round(time.time() - t0, 1), "load_average_end": os.getloadavg()}
            summary(results)
            atomic_write_json(out, results)
            atomic_write_text(out.with_name("perf.md"), markdown(results))
            print(f"{name}: done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    summary(results)
    atomic_write_json(out, results)
    atomic_write_text(out.with_name("perf.md"), markdown(results))
    return results


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main(argv: Sequence[str] | None = None) -> None:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups of {', '.join(GROUPS)}")
    p.add_argument("--force", action="store_true", help="redo groups even if cached with the same settings")
    p.add_argument("--model", default=d.model, help="embedded (default) or tiny (a random model, for tests)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default 1, see Settings.threads)")
    p.add_argument("--length", type=int, default=d.length)
    p.add_argument("--steps-per-round", type=int, default=d.steps_per_round)
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--warmup-rounds", type=int, default=d.warmup_rounds)
    p.add_argument("--contenders", default=",".join(d.contenders),
                   help=f"of {', '.join(CONTENDERS + OPTIONAL_CONTENDERS)}")
    p.add_argument("--method-length", type=int, default=d.method_length)
    p.add_argument("--method-rounds", type=int, default=d.method_rounds)
    p.add_argument("--memory-steps", type=int, default=d.memory_steps)
    p.add_argument("--objectives-m", type=_ints, default=d.objectives_m)
    p.add_argument("--lengths", type=_ints, default=d.lengths)
    p.add_argument("--scaling-rounds", type=int, default=d.scaling_rounds)
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--settings-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        s = json.loads(args.settings_json)
        settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()})
        torch.set_num_threads(settings.threads)
        print(json.dumps(memory_child(args.memory_child, settings)))
        return
    torch.set_num_threads(args.threads)
    contenders = tuple(args.contenders.split(","))
    unknown = set(contenders) - set(CONTENDERS + OPTIONAL_CONTENDERS)
    only = tuple(args.only.split(","))
    if unknown or set(only) - set(GROUPS):
        p.error(f"unknown contenders {sorted(unknown)} or groups {sorted(set(only) - set(GROUPS))}")
    settings = replace(
        d, model=args.model, length=args.length, steps_per_round=args.steps_per_round, rounds=args.rounds,
        warmup_rounds=args.warmup_rounds, contenders=contenders, method_length=args.method_length,
        method_rounds=args.method_rounds, memory_steps=args.memory_steps, objectives_m=args.objectives_m,
        lengths=args.lengths, scaling_rounds=args.scaling_rounds, threads=args.threads,
    )
    results = run_groups(settings, args.out, only=only, force=args.force)
    print(json.dumps({"ratios": results.get("ratios"), "targets": results.get("targets")}, indent=2))


if __name__ == "__main__":
    main()
