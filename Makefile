# Everything goes through a local virtualenv so that `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_LOGGING_LEVEL ?= WARNING
export PYTHONDONTWRITEBYTECODE = 1
REAL_DATA ?= ../shared/data

.PHONY: setup demo test soak bench lint docs train clean test-server

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/vitalstream demo

test: setup
	$(PY) -m pytest

soak: setup  # long versions: kill trials, fuzz examples, outage seconds (make test runs short ones)
	KILL_TRIALS=$${KILL_TRIALS:-20} FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} FUZZ_BROKER_EXAMPLES=$${FUZZ_BROKER_EXAMPLES:-5} \
	OUTAGE_S=$${OUTAGE_S:-60} SOAK=1 $(PY) -m pytest -s tests/system/test_crash.py tests/system/test_hostile.py tests/system/test_outage.py

test-server: setup  # also runs a deployment through `vitalstream serve` on a real `prefect server start` (~1 min)
	VITALSTREAM_SERVER_TESTS=1 $(PY) -m pytest tests/system/test_serve.py

bench: setup  # the make-bench shape, the single-topic shape, record decoding alone, start-up, idle fetches, the scorer alone
	$(PY) bench/throughput.py
	$(PY) bench/throughput.py --shape single --no-validate
	$(PY) bench/record_decoding.py
	$(PY) bench/startup.py
	$(PY) bench/idle_fetch.py   # what a consumer costs while idle, by fetch wait
	$(PY) bench/scoring.py
	$(PY) bench/alert_rate.py   # raised alerts per patient-day outside real events (about 40 s)
	@if [ -f $(REAL_DATA)/mimic3_demo/readings.csv.gz ]; then $(PY) bench/alert_rate.py --csv $(REAL_DATA)/mimic3_demo/readings.csv.gz; \
	else echo "bench/alert_rate.py --csv: skipped, no $(REAL_DATA)/mimic3_demo (set REAL_DATA)"; fi
	$(PY) bench/latency.py      # live latency: real-time producer for 7 min through run --follow

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy pipeline sim ops models runtime flows cli

docs: setup  # regenerate what is copied from code: tables in README.md and docs/, and prefect.yaml
	$(PY) docs/generate.py

train: setup
	$(VENV)/bin/vitalstream train

clean:
	rm -rf $(VENV) lake build *.egg-info .pytest_cache
