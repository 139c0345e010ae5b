# Wharf: the README's commands. Everything builds --locked.
CARGO ?= cargo
FUZZ_SECONDS ?= 600

.PHONY: build test fmt-check clippy unit-and-integration demo bench fuzz clean

build:
	$(CARGO) build --workspace --locked

## test: formatting, clippy -D warnings, then every unit, integration and
## end-to-end test (the Docker ones run against the real engine).
test: fmt-check clippy unit-and-integration

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit-and-integration:
	$(CARGO) test --workspace --locked

## demo: the local demo: registry, core, a Docker agent, deploys, a rollback (see README).
demo:
	$(CARGO) run --quiet --locked -p wharf-testbed -- demo

## bench: benchmarks against the real peers; results go to docs/benchmarks.md.
## core_dispatch takes its sizes from WHARF_BENCH_* (see docs/benchmarks.md), e.g.
## `make bench WHARF_BENCH_MEMORY_AGENTS=1000 WHARF_BENCH_LATENCY_SECS=3` for a quick run.
## poll_dispatch (the HTTPS long-poll transport) likewise, e.g. WHARF_BENCH_FLEET_AGENTS=1000.
bench:
	$(CARGO) bench --locked -p wharf-core --bench store_commit
	$(CARGO) bench --locked -p wharf-testbed --bench core_dispatch
	$(CARGO) bench --locked -p wharf-testbed --bench poll_dispatch
	$(CARGO) bench --locked -p wharf-testbed --bench docker_swap
	$(CARGO) bench --locked -p wharf-testbed --bench compose_deploy
	$(CARGO) bench --locked -p wharf-testbed --bench fleet_audit

## fuzz: the protocol fuzz targets (needs cargo-fuzz and a nightly toolchain).
fuzz:
	cd protocol/fuzz && $(CARGO) +nightly fuzz run frame_decoder -- -max_total_time=$(FUZZ_SECONDS)
	cd protocol/fuzz && $(CARGO) +nightly fuzz run message_decode -- -max_total_time=$(FUZZ_SECONDS)

clean:
	$(CARGO) clean
