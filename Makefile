# Two commands do everything on a fresh clone: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAGE  ?= dev
# The functions' runtime, declared once (prepost/package.py); the virtualenvs, the tests and
# local mode run on the same version, and the packager refuses any other.
RUNTIME := $(shell sed -n 's/^LAMBDA_RUNTIME = "\(.*\)"$$/\1/p' prepost/package.py)
# An interpreter of that version: PATH first, then pyenv's versions directory. A pyenv shim
# that does not run (another version selected) is skipped. `make PYTHON=...` overrides.
ifndef PYTHON
PYTHON := $(shell for p in $$(IFS=:; for d in $$PATH; do echo "$$d/$(RUNTIME)"; done) \
	$${PYENV_ROOT:-$$HOME/.pyenv}/versions/*/bin/$(RUNTIME); do \
	[ -x "$$p" ] && "$$p" -c 'import sys; sys.exit("python%d.%d" % sys.version_info[:2] != "$(RUNTIME)")' \
	2>/dev/null && { echo "$$p"; break; }; done)
endif
NO_PYTHON := error: no working $(RUNTIME) (the functions' runtime) was found on PATH or in pyenv's versions directory, so install it (e.g. with pyenv install 3.13) or run make PYTHON=/path/to/$(RUNTIME).
STAMP  := $(VENV)/.installed-$(RUNTIME)
# Template checks (cfn-lint, checkov, the SAM transform) pin other versions of boto3 and
# pydantic than the app: they get their own virtualenv.
CHECKS       := .venv-checks
CHECKS_STAMP := $(CHECKS)/.installed-$(RUNTIME)
PACKAGE_DIR  := build/package
# What the template checks lint and scan: the local stage (the values local mode simulates),
# packaged with --for-checks because it is never deployed; dev and prod hold values a
# deployer fills in (`make package STAGE=...`).
CHECKS_DIR   := build/checks
BUS_CHECKS_DIR := build/checks-bus
BUS_VARIANT := --set PREPOST_EVENT_BUS_NAME=prepost-backup-local-start \
	--set PREPOST_START_PRINCIPALS=arn:aws:iam::123456789012:role/BackupOperator

.PHONY: demo test lint format bench clean package deploy template-checks mutants

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 2; }
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(CHECKS_STAMP): requirements-checks.txt
	@test -n "$(PYTHON)" || { echo "$(NO_PYTHON)" >&2; exit 2; }
	$(PYTHON) -m venv --clear $(CHECKS)
	$(CHECKS)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKS)/bin/python -m pip install --quiet -r requirements-checks.txt
	touch $(CHECKS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/prepost demo

# worksteal: an idle worker takes tests queued for the other; the slow tests are queued
# first, half for each worker (tests/conftest.py), so that no core idles at the end.
# Measured on 2 cores on 2026-12-06: 333 s of pytest, 7 min 50 s for .ci/run with installs.
test: $(STAMP) lint template-checks
	$(PY) -m pytest -n auto --dist worksteal

# Plant each bug of tests/mutants/planted.py in a copy of the tree, one at a time, and run
# only the property test against it: every one must be caught. Not part of `make test`.
mutants: $(STAMP)
	$(PY) -m tests.mutants.run

# The cost of one run, for 2-hour and 8-hour backup jobs (BENCH_SIZES=10,100 for a quick look).
BENCH_SIZES ?= 10,100,1000,10000
bench: $(STAMP)
	$(VENV)/bin/prepost bench seed-example --sizes $(BENCH_SIZES)
	$(VENV)/bin/prepost bench seed-example-8h --sizes $(BENCH_SIZES)

# The CloudFormation template and deployment.zip of STAGE in build/package (see README, Deploy).
package: $(STAMP)
	$(PY) -m prepost.package --stage $(STAGE) --out $(PACKAGE_DIR)

# Package STAGE and deploy it as a CloudFormation stack with the AWS CLI (see README, Deploy):
# `make deploy STAGE=prod BUCKET=my-deployment-bucket [STACK=...] [PARAMS='KEY=VALUE ...']
# [SCRIPTS=s3://...]`. BUCKET receives the package; STACK defaults to prepost-backup-STAGE;
# PARAMS are the stack's parameter overrides; the script kit (scripts/) goes to SCRIPTS, by
# default the stage's first S3 location in PREPOST_ALLOWED_SCRIPT_SOURCES. STAGE must be
# named here: the `dev` default above is for packaging.
BUCKET ?=
STACK  ?=
PARAMS ?=
SCRIPTS ?=
DEPLOY_STAGE = $(if $(filter file,$(origin STAGE)),,$(STAGE))
deploy: $(STAMP)
	$(PY) -m prepost.deploy --stage "$(DEPLOY_STAGE)" --bucket "$(BUCKET)" --stack "$(STACK)" \
		--params "$(PARAMS)" --scripts "$(SCRIPTS)" --out $(PACKAGE_DIR)

# The local stage's template, and the same stage with a dedicated event bus (README, Deploy),
# whose bus, bus policy and rules on that bus the first lacks: each linted and scanned, its
# rules and queue checked after the SAM transform, and linted again after the transform,
# which is when cfn-lint sees the roles' policies (W3037: unknown IAM actions).
template-checks: $(STAMP) $(CHECKS_STAMP)
	$(PY) -m prepost.package --stage local --for-checks --out $(CHECKS_DIR)
	$(PY) -m prepost.package --stage local --for-checks --out $(BUS_CHECKS_DIR) $(BUS_VARIANT) \
		--no-import-check
	@# The two templates are checked side by side (each check is single-threaded), each into
	@# its own log, printed in order once both are done.
	@pids=; for dir in $(CHECKS_DIR) $(BUS_CHECKS_DIR); do \
		{ echo "== template checks of $$dir/sam.json"; \
		$(CHECKS)/bin/cfn-lint $$dir/sam.json && \
		$(CHECKS)/bin/checkov -f $$dir/sam.json --framework cloudformation \
			--quiet --compact --skip-download && \
		$(CHECKS)/bin/python -m prepost.template_check $$dir/sam.json \
			--write $$dir/transformed.json && \
		$(CHECKS)/bin/cfn-lint $$dir/transformed.json; } > $$dir/checks.log 2>&1 & \
		pids="$$pids $$!"; \
	done; \
	failed=0; for pid in $$pids; do wait $$pid || failed=1; done; \
	cat $(CHECKS_DIR)/checks.log $(BUS_CHECKS_DIR)/checks.log; \
	[ $$failed = 0 ] || { echo "template checks failed (above)" >&2; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(CHECKS) build .pytest_cache .mypy_cache .ruff_cache
