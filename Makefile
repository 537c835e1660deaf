# canarywatch: every target sets up what it needs (virtual environment, broker, API server).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?=
export PYTHONUNBUFFERED := 1

.PHONY: venv lint typecheck unit test demo bench bench-decisions clean

# The request-log line scanner is Rust (linescan/), built by maturin with the machine's cargo.
LINESCAN := linescan/Cargo.toml linescan/Cargo.lock linescan/pyproject.toml linescan/src/lib.rs \
	linescan/canarywatch_linescan.pyi
export PATH := $(HOME)/.cargo/bin:$(PATH)

$(VENV)/.installed: pyproject.toml $(LINESCAN)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet ./linescan
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check streams agents tests bench
	$(VENV)/bin/ruff format --check streams agents tests bench
	$(VENV)/bin/lint-imports
	cargo fmt --check --manifest-path linescan/Cargo.toml
	cargo clippy --quiet --all-targets --manifest-path linescan/Cargo.toml -- -D warnings

typecheck: venv
	$(VENV)/bin/mypy

test: lint typecheck
	cargo test --quiet --lib --manifest-path linescan/Cargo.toml
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/canarywatch demo $(if $(DURATION),--duration $(DURATION),)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache linescan/target

# Real kube-apiserver (built from source) + etcd for the `kube` tests, cached outside the clone
# in ${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}. The tests' fixture runs
# this itself; the target only warms the cache.
.PHONY: kube-apiserver
kube-apiserver:
	scripts/kube/build.sh

# The real Argo Rollouts controller and its five CRDs for the `argo` tests (scripts/argo/go.mod
# pins the version), cached next to kube-apiserver. The tests build it too; this warms the cache.
.PHONY: argo-rollouts
argo-rollouts:
	scripts/argo/build.sh

# The promotion gate as Argo shows it (README "Promotion gate in Argo"): a real stack once,
# `kubectl argo rollouts get rollout` at the analysis step and after promotion.
.PHONY: show-gate
show-gate: venv
	$(PY) -m bench.show_gate

# Real single-node Apache Kafka (KRaft) from Maven Central, cached outside the clone; state in
# $(KAFKA_DIR). `make broker` returns once the broker answers; `make broker-stop` stops it.
KAFKA_DIR ?= $(CURDIR)/.kafka-data
KAFKA_PORT ?= 9092
KAFKA_CONTROLLER_PORT ?= 9093
.PHONY: broker broker-stop
broker: venv
	$(PY) -m agents.localkafka start --dir $(KAFKA_DIR) --port $(KAFKA_PORT) --controller-port $(KAFKA_CONTROLLER_PORT)

broker-stop: venv
	$(PY) -m agents.localkafka stop --dir $(KAFKA_DIR)

# Throughput, decision latency, memory and scale-out against a real local broker (issue 5).
.PHONY: bench bench-quick profile
bench: venv
	scripts/ensure-kcat.sh >/dev/null
	$(PY) -m bench.throughput

bench-quick: venv
	scripts/ensure-kcat.sh >/dev/null
	$(PY) -m bench.throughput --quick

profile: venv
	$(PY) -m bench.profile_ingest

# Deployments -> Argo Rollouts in waves, on a real API server and the real controller (issue 15).
# Actuation on the real controller in two clusters: decision -> RolloutAborted, the race, the
# cross-cluster case (issue 12); last line `kube-e2e: ...`.
.PHONY: bench-kube
bench-kube: venv
	$(PY) -m bench.kube

.PHONY: bench-migrate
bench-migrate: venv
	$(PY) -m bench.migrate

# Decision statistics: canarywatch against Argo-/Kayenta-style judges and an oracle (issue 3).
bench-decisions: venv
	$(PY) -m bench.decisions

# Evidence across kill -9 on the real local broker (issue 10): kept, lost, double, duplicates.
.PHONY: bench-faults
bench-faults: venv
	$(PY) -m bench.faults $(if $(RESUME_ENVS),--resume-envs $(RESUME_ENVS),)  # S at 100,000 (the default)

# A hostile corpus (codecs, sizes, bad types, floods, CRC32 placement, kill -9) against two
# workers on the real local broker (issue 9).
.PHONY: bench-hostile
bench-hostile: venv
	$(PY) -m bench.hostile

# The burst-absorption / detection-speed trade-off table of docs/decisions.md (issue 11).
.PHONY: bench-decisions-tradeoff
bench-decisions-tradeoff: venv
	$(PY) -m bench.decisions --tradeoff
# Release-level analysis: pooled release test, fleet-wide halt, triage (issue 13). In process.
.PHONY: bench-fleet
bench-fleet: venv
	$(PY) -m bench.fleet

# The pass verdict (issue 17): time to `pass` for healthy canaries, wrong passes for canaries
# worse than the tolerance (>= 2,000 each, 95 % intervals); last line `pass-bench: ...`.
.PHONY: bench-pass
bench-pass: venv
	$(PY) -m bench.promotion

# The release-level pass (issue 17): quiet environments of a healthy release passing on pooled
# evidence, wrong passes of releases at 2x the tolerance; last line `pooled-pass-bench: ...`.
.PHONY: bench-pooled-pass
bench-pooled-pass: venv
	$(PY) -m bench.pooledpass

# The operator's tools at fleet scale (issue 14): one /metrics scrape and `canarywatch status`
# with 20,000 canaries in progress on a real broker and worker; last line `ops: ...`.
.PHONY: bench-ops
bench-ops: venv
	$(PY) -m bench.ops
