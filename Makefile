# Shorthands for the scripts the README describes; each target is one
# script or one go command, so nothing here is needed to use them.
#
#   make build      Caddy with the plugin, from xcaddy.json, as ./caddy
#   make run        build and serve Caddyfile.example on localhost:8080
#   make test       the whole test suite, as CI runs it
#   make bench      Go benchmarks of the decision, then the wrk load benchmark
#   make fuzz       every fuzz target for FUZZTIME (default 20s) each

# BENCHCOUNT is how many times go test runs each benchmark (benchstat
# wants several).
BENCHCOUNT ?= 3

.PHONY: build run test bench bench-go bench-load fuzz

build:
	scripts/build-caddy.sh

run:
	scripts/run-example.sh

test:
	scripts/test.sh

bench: bench-go bench-load

bench-go:
	go test -run '^$$' -bench . -benchmem -count $(BENCHCOUNT) ./caddyauth/

bench-load:
	scripts/bench-load.sh

fuzz:
	scripts/fuzz.sh
