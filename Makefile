# Two commands do everything on a fresh clone: `make demo` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3
STAGE  ?= dev
# Template checks (cfn-lint, checkov, the SAM transform) pin other versions of boto3 and
# pydantic than the app: they get their own virtualenv.
CHECKS       := .venv-checks
CHECKS_STAMP := $(CHECKS)/.installed-stamp
PACKAGE_DIR  := build/package

.PHONY: demo test lint format bench clean package template-checks

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(CHECKS_STAMP): requirements-checks.txt
	$(PYTHON) -m venv $(CHECKS)
	$(CHECKS)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKS)/bin/python -m pip install --quiet -r requirements-checks.txt
	touch $(CHECKS_STAMP)

demo: $(STAMP)
	$(VENV)/bin/prepost demo

test: $(STAMP) lint template-checks
	$(PY) -m pytest -n auto

bench: $(STAMP)
	$(VENV)/bin/prepost bench

# The CloudFormation template and deployment.zip of STAGE in build/package (see README, Deploy).
package: $(STAMP)
	$(PY) -m prepost.package --stage $(STAGE) --out $(PACKAGE_DIR)

# The packaged template (the dev stage unless STAGE says otherwise), linted and scanned;
# then the same stage with a dedicated event bus (README, Deploy), whose bus, bus policy
# and rules on that bus the first template does not have.
BUS_PACKAGE_DIR := build/package-bus
BUS_VARIANT := --set PREPOST_EVENT_BUS_NAME=prepost-backup-$(STAGE)-start \
	--set PREPOST_START_PRINCIPALS=arn:aws:iam::123456789012:role/BackupOperator
template-checks: $(CHECKS_STAMP) package
	$(PY) -m prepost.package --stage $(STAGE) --out $(BUS_PACKAGE_DIR) $(BUS_VARIANT)
	for template in $(PACKAGE_DIR)/sam.json $(BUS_PACKAGE_DIR)/sam.json; do \
		$(CHECKS)/bin/cfn-lint $$template && \
		$(CHECKS)/bin/checkov -f $$template --framework cloudformation \
			--quiet --compact --skip-download && \
		$(CHECKS)/bin/python -m prepost.template_check $$template || exit 1; \
	done

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(CHECKS) build .pytest_cache .mypy_cache .ruff_cache
