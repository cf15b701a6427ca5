# Everyday commands. Each target calls the package's CLI; the logic lives in trainer/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; a GPU user sets TORCH, e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH ?= torch==2.13.0
LOGDIR ?= logs
EXPERIMENTS ?= $(sort $(wildcard experiments/*.yaml))
WORKERS ?=
# Where sweeps run: local worker processes, ray (a Ray instance on this machine, or ADDRESS's cluster) or
# slurm; EXECUTOR_OPTS="partition=gpu time=120" are the executor's options (docs/cluster.md)
EXECUTOR ?=
ADDRESS ?=
EXECUTOR_OPTS ?=
# Optional dependencies to install besides the test tools, e.g. EXTRAS=ray or EXTRAS=slurm
EXTRAS ?=
SRC ?=
PORT ?= 6006
FOCUS ?=
ONLY ?=
OUT ?= $(LOGDIR)/hparams.png
REPORT ?= reports

.PHONY: setup sweep dry-run check test lint docs tensorboard status index merge report bench screenshot slurm-up slurm-down clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# Create the virtual environment and install the project (done by the other targets on first use); EXTRAS=ray adds Ray
setup: $(BIN)/.installed
	$(if $(EXTRAS),$(BIN)/pip install --quiet -e ".[$(EXTRAS)]")

# Run the full comparison set (every spec in experiments/) into $(LOGDIR)/; EXECUTOR=ray or slurm runs it there
sweep: setup
	$(BIN)/python -m trainer sweep $(EXPERIMENTS) --logdir $(LOGDIR) $(if $(WORKERS),--workers $(WORKERS)) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(ADDRESS),--address $(ADDRESS)) $(foreach o,$(EXECUTOR_OPTS),--executor-opt $(o))

# List the runs `make sweep` would run, writing nothing
dry-run: setup
	$(BIN)/python -m trainer sweep $(EXPERIMENTS) --logdir $(LOGDIR) --dry-run

# Validate the specs without running anything
check: setup
	$(BIN)/python -m trainer check $(EXPERIMENTS)

# Run the test suite
test: setup
	$(BIN)/python -m pytest -q

# Lint, check the formatting and the layers contract (ruff and import-linter, configured in pyproject.toml)
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Build the documentation site into build/site, strictly: a broken link or a stale generated page fails
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

# Serve $(LOGDIR)/ with TensorBoard on port $(PORT); FOCUS="digits" first declares that experiment's own columns
tensorboard: setup
	$(if $(FOCUS),$(BIN)/python -m trainer index $(LOGDIR) $(foreach e,$(FOCUS),--focus $(e)))
	$(BIN)/tensorboard --logdir $(LOGDIR) --port $(PORT)

# List the runs in $(LOGDIR)/ and their states
status: setup
	$(BIN)/python -m trainer status $(LOGDIR)

# Rebuild the HParams experiment record of $(LOGDIR)/
index: setup
	$(BIN)/python -m trainer index $(LOGDIR)

# What the runs of $(LOGDIR)/ show over their seeds: $(REPORT)/report.md with its pictures
report: setup
	$(BIN)/python -m trainer report $(LOGDIR) --out $(REPORT)

# Merge teammates' log folders into $(LOGDIR)/: make merge SRC="../alice/logs ../bob/logs"
merge: setup
	$(BIN)/python -m trainer merge $(SRC) --into $(LOGDIR)

# Measure logging overhead, sweep scaling and log sizes; prints the table
bench: setup
	$(BIN)/python scripts/bench.py $(foreach p,$(ONLY),--only $(p))

# Screenshot of the HParams view of $(LOGDIR)/ in headless Chromium, into $(OUT) (default: $(LOGDIR)/hparams.png)
screenshot: setup
	$(BIN)/python scripts/screenshot.py --logdir $(LOGDIR) --out $(OUT)

# Start a one-node Slurm on 127.0.0.1 for the Slurm tests (installs it on first use); its last line is `export SLURM_CONF=...`
slurm-up:
	scripts/local-slurm.sh up

# Stop the Slurm that `make slurm-up` started
slurm-down:
	scripts/local-slurm.sh down

# Remove the virtual environment and the built site (logs are kept)
clean:
	rm -rf $(VENV) .pytest_cache build
