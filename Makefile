# vgs — the two set-up commands (see README.md):
#   make demo   install, build the built-in scenes data, train, evaluate, write the report
#   make test   install and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: install tts-deps system-deps demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Debian packages: the TTS engines beside espeak-ng (flite; festival with three English voices) that the
# voice pool and the cross-voice tests use, and Chromium for the browser test (Playwright never downloads one).
DEBIAN_TTS := flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
tts-deps:
	@command -v flite >/dev/null 2>&1 && command -v festival >/dev/null 2>&1 && \
	  [ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEBIAN_TTS) >/dev/null; }

system-deps: tts-deps
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: install tts-deps
	$(VENV)/bin/vgs demo --out $(OUT)

test: install system-deps
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache runs/demo
