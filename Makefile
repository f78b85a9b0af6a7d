# SoilSSL — two commands do everything on a fresh Debian 12 machine:
#   make demo   installs what is missing, then runs the pipeline on resources/demo
#   make test   installs what is missing, then runs the test suite (with the desktop test:
#               the real QGIS under Xvfb; screenshots in .build/desktop/)
PY := .venv/bin/python
export QT_QPA_PLATFORM := offscreen

.PHONY: setup test desktop screenshots demo bench evaluate noise zip clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q

# Only the desktop test (tests/test_desktop.py).
desktop: setup
	$(PY) -m pytest -q -m desktop

# The README's screenshots (docs/screenshots/) from the last desktop test's .build/desktop/.
screenshots:
	@bash scripts/update_screenshots.sh

demo: setup
	@bash scripts/demo.sh

evaluate: setup
	$(PY) scripts/evaluate.py

# How far rf_pixels moves from itself when only its seed changes (eval/noise.md).
noise: setup
	$(PY) scripts/noise_floor.py

# make bench BENCH_ARGS="--quick" / BENCH_ARGS="--plant no_bf16" (a planted regression)
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

zip:
	@bash scripts/make_zip.sh

clean:
	rm -rf demo_out bench_out eval_out dist .build
