# SoilSSL — two commands do everything on a fresh Debian 12 machine:
#   make demo   installs what is missing, then runs the pipeline on resources/demo
#   make test   installs what is missing, then runs the test suite
PY := .venv/bin/python
export QT_QPA_PLATFORM := offscreen

.PHONY: setup test demo bench zip clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	@bash scripts/demo.sh

# make bench BENCH_ARGS="--quick" / BENCH_ARGS="--plant no_bf16" (a planted regression)
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

zip:
	@bash scripts/make_zip.sh

clean:
	rm -rf demo_out bench_out dist .build
