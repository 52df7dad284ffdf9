# Greenvisor: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
SESSION_PORT ?= 5432
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup deps apt-deps run demo compile test test-unit lint typecheck bench bench-quick soak

help:
	@echo "make run      - install, start a demo Postgres + tenant t1, run the pooler"
	@echo "make test     - the whole test suite (what CI runs)"
	@echo "make compile  - compile the relay's hot path (mypyc): ~40% fewer instructions per query"
	@echo "make lint / make typecheck / make bench"
	@echo "make soak     - 30 min of load with random faults, then a leak check (SOAK_ARGS=...)"

apt-deps:  ## Debian/Ubuntu packages the tests and the demo need (run as root)
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
		postgresql postgresql-client pgbouncer zookeeper make gcc libc6-dev chromium chromium-driver

setup:  ## the Debian packages, only if missing
	@command -v pgbouncer >/dev/null 2>&1 && [ -x /usr/share/zookeeper/bin/zkServer.sh ] \
		&& command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
		&& command -v gcc >/dev/null 2>&1 \
		&& ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(SUDO) $(MAKE) apt-deps

deps: setup
	$(PYTHON) -m pip install -q -r requirements.txt

# Passwords are stored encrypted under VAULT_ENC_KEY; the demo keeps a generated key in
# .demo/vault.key unless you set VAULT_ENC_KEY yourself.
DEMO_KEY = $${VAULT_ENC_KEY:-$$(cat .demo/vault.key)}

# The demo runs without the compiled hot path if it cannot be built (make test requires it).
run: deps
	@$(PYTHON) manage.py hotpath build || echo "== the hot path was not compiled (above): the demo runs it as plain Python"
	@mkdir -p .demo && { [ -n "$$VAULT_ENC_KEY" ] || [ -s .demo/vault.key ] || \
		$(PYTHON) -c "import secrets; print(secrets.token_hex(32))" > .demo/vault.key; }
	VAULT_ENC_KEY=$(DEMO_KEY) $(PYTHON) manage.py migrate --noinput
	VAULT_ENC_KEY=$(DEMO_KEY) $(PYTHON) manage.py demodb
	VAULT_ENC_KEY=$(DEMO_KEY) $(PYTHON) manage.py runpooler --proxy-port-session $(SESSION_PORT)

compile:  ## the relay's hot path compiled with mypyc into build/compiled (pooler/hotpath.py)
	$(PYTHON) manage.py hotpath build

# The unit tests once on the plain-Python hot path, then everything on the compiled one
# (GREENVISOR_EXPECT_COMPILED: a build that would not be used fails the run).
test: deps compile
	GREENVISOR_PURE_PYTHON=1 $(PYTHON) -m pytest tests/unit -q $(PYTEST_ARGS)
	GREENVISOR_EXPECT_COMPILED=1 $(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit:
	$(PYTHON) -m pytest -m unit $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

typecheck:
	$(PYTHON) -m mypy pooler tenants

bench:
	$(PYTHON) -m bench.run

bench-quick:
	$(PYTHON) -m bench.run --quick

SOAK_ARGS ?= --minutes 30
soak:  ## mixed load + random faults, then fds/greenlets/pool slots/RSS vs. baseline
	$(PYTHON) -m bench.soak $(SOAK_ARGS)

.PHONY: bench-micro
bench-micro:  ## hot-path microbenchmarks (< 30 s); ARGS="--json new.json --compare old.json"
	$(PYTHON) -m bench.micro $(ARGS)
