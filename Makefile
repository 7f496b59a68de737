# pushblaster — run `make help` for the targets.
GO ?= go

.PHONY: help run demo test bench lint build

help: ## list targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

demo: ## watch one automation run through all five phases (embedded SQLite)
	$(GO) run ./cmd/pushblaster demo

run: ## start the engine on ./pushblaster.db (embedded SQLite)
	$(GO) run ./cmd/pushblaster serve

build: ## build bin/pushblaster
	$(GO) build -o bin/pushblaster ./cmd/pushblaster

test: ## the whole test suite, with the race detector (needs PostgreSQL on 127.0.0.1)
	$(GO) test -race -count=1 -timeout 14m ./...

bench: ## benchmarks (needs PostgreSQL, and h2load for the raw HTTP/2 rate); record results in docs/BENCHMARKS.md
	@command -v h2load >/dev/null || echo "bench: h2load not found: BenchmarkDelivery/h2load will be SKIPPED, not measured (install it: apt-get install nghttp2-client)"
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l .)" || (gofmt -l .; exit 1)
	$(GO) vet ./...
