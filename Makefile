# Set-up promise: on a fresh clone, `make run` installs everything and starts the
# service on the embedded models; `make test` installs what tests need and runs them.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# Debian packages: espeak-ng/sox make test speech; chromium drives the browser
# test; sip-tester (SIPp) and baresip are the SIP peers; docker-compose validates
# the deployment file offline. kamailio is not among them: see sip-front below.
APT_RUN := espeak-ng sox
APT_TEST := $(APT_RUN) libsox-fmt-all chromium chromium-driver sip-tester baresip docker-compose

# moshi pins torch<2.10 and snac/openai-whisper would pull a CUDA torch: they go
# in without deps; what they really need is in the [native] extra.
NO_DEPS := moshi==0.2.13 snac==1.2.1 openai-whisper==20250625

.PHONY: run test install system-deps-run system-deps-test sip-front bench bench-endpoint bench-latency bench-load bench-soak bench-sip bench-sip-latency bench-phone-wer clean

run: system-deps-run $(STAMP)
	$(VENV)/bin/voice serve

test: system-deps-test $(STAMP)
	NO_TORCH_COMPILE=1 $(PY) -m pytest -q -p no:cacheprovider

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q torch==2.13.0
	@echo ">> installing the service; the first time, pip compiles llama-cpp-python (about 10 minutes on 2 cores)"
	$(PIP) install --progress-bar off -e '.[native,bench,dev,livekit,mcp]'
	$(PIP) install -q --no-deps $(NO_DEPS)
	$(PY) -c "import torch, llama_cpp, faster_whisper, piper, pipecat, moshi, snac, livekit.agents; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

system-deps-run:
	$(call apt_install,$(APT_RUN))

system-deps-test: sip-front
	$(call apt_install,$(APT_TEST))

# kamailio (Debian package) is the SIP front of `voice serve --sip --sip-workers N` with N > 1 and
# nothing else; `make run` does not install it (`voice serve` says so in one line when it is
# missing), the tests and bench-sip do. The package enables its own kamailio.service on port
# 5060, which we do not use (the service starts a kamailio of its own): when this target has just
# installed the package, it stops and disables that service (systemd hosts only).
sip-front:
	@if ! dpkg -s kamailio >/dev/null 2>&1; then \
	  echo ">> installing Debian package: kamailio"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends kamailio >/dev/null; \
	  if [ -d /run/systemd/system ]; then \
	    echo ">> disabling kamailio.service (the package's own proxy on port 5060; voice starts its own kamailio)"; \
	    $$SUDO systemctl disable --now kamailio >/dev/null 2>&1 || true; \
	  fi; \
	fi

bench-latency: system-deps-run $(STAMP)
	$(PY) -m bench.latency --n 12

# N simultaneous conversations, in process then over loopback WebRTC, ramped until real time breaks.
bench-load: system-deps-run $(STAMP)
	$(PY) -m bench.load --levels 1,2,3,4,6,8 --transport both --webrtc-max-n 4 --out out/bench-load

bench: system-deps-run $(STAMP)
	$(VENV)/bin/voice bench make-data out/fdb-data --n 5 --seed 0
	$(VENV)/bin/voice bench fdb out/fdb-data --task all --pipeline cascaded --out out/fdb

# Endpointing (eot-bench style): false cut-offs against latency at every pause, four policies. Real human
# speech from ../shared/speech when it is there, else the two recordings the tests carry.
HUMAN_SPEECH := $(firstword $(wildcard ../shared/speech/fdb-human-dev) tests/fixtures/human)
bench-endpoint: system-deps-run $(STAMP)
	$(VENV)/bin/voice bench endpoint $(HUMAN_SPEECH) --out out/endpoint

# Not in CI: 30 minutes of back-to-back conversations; RSS, fds, tasks, lost turns (out/soak.json).
bench-soak: system-deps-run $(STAMP)
	$(PY) -m bench.soak --minutes 30 --webrtc --out out/soak.json

# K simultaneous phone calls (SIPp) through the kamailio front and its agent workers, for each K in
# SIP_CALLS (answered/held/dropped, spoken answers, v2v on the wire; out/bench-sip/). Needs CAP_NET_RAW.
SIP_CALLS ?= 10 12
bench-sip: system-deps-test $(STAMP)
	@rc=0; for k in $(SIP_CALLS); do $(PY) -m bench.sip_load --calls $$k --out out/bench-sip || rc=1; done; exit $$rc

# One phone call per question (SIPp, PCMU) against a fresh agent: voice-to-voice on the wire, median/p90/max,
# then the same questions in process (bench.latency). NEIGHBOUR=shell|python|numpy|llama|whisper|ort keeps a
# CPU-bound process busy on one core throughout (out/bench-sip-latency/). Needs CAP_NET_RAW.
NEIGHBOUR ?= none
bench-sip-latency: system-deps-test $(STAMP)
	$(PY) -m bench.sip_latency --n 12 --inprocess --neighbour $(NEIGHBOUR) --out out/bench-sip-latency/$(NEIGHBOUR)

# Word error rate on phone audio (G.711 / G.722 through the SIP path's resampling) against 16 kHz (out/phone-wer/).
bench-phone-wer: system-deps-run $(STAMP)
	$(PY) -m bench.phone_wer --out out/phone-wer

clean:
	rm -rf $(VENV) out test-output
