"""Benchmark: wall-clock time of the built-in demo (`make demo` → `mollm demo`) on this machine, and what it shows.

Runs the demo end to end (fine-tune the embedded SmolLM2 on the built-in facts, then unlearn the forget part with
MOLLM) in a temporary directory, and writes its time per phase, the before/after table, the demo's story checks
(``mollm.demo.story``), the machine's description and its load average before and after (other jobs on a shared
machine slow the demo several times over) to ``bench/results/demo.json``. The README quotes the time from here; no
test asserts a time (``tests/test_demo.py`` asserts the checks on the saved table).

Usage: ``python bench/demo_time.py [--out bench/results/demo.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mollm.core.atomic import atomic_write_json
from mollm.demo import run_demo


def _phase_seconds(run_dir: Path) -> float:
    return float(json.loads((run_dir / "run.json").read_text())["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_demo(Path(tmp) / "demo", progress=False)
        total = time.perf_counter() - t0
        result = {
            "benchmark": "demo_time",
            "seconds_total": round(total, 1),
            "seconds_finetune_loop": _phase_seconds(Path(summary["finetune_dir"])),
            "seconds_unlearn_loop": _phase_seconds(Path(summary["unlearn_dir"])),
            "under_5_minutes": total < 300,
            "table": summary["table"],
            "story": summary["story"],
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_1_5_15_min_before": [round(x, 2) for x in load_before],
                "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()],
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
        }
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
