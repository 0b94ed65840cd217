# kvserve container image.
#
# Targets:
#   runtime (default)  CPU server on debian:bookworm
#   runtime-cuda       the same server with the CUDA backend (engine.device: cuda): the module
#                      libkvserve_cuda.so beside the binary and the toolkit's cuBLAS libraries,
#                      built from an nvidia/cuda devel image (build argument CUDA_DEVEL_IMAGE).
#                      Run it with a GPU and the NVIDIA container runtime; with engine.device:
#                      cpu (the default) it serves on the CPU and loads no CUDA library.
#
#   deploy/scripts/build-image.sh                      # buildah, no Docker engine needed
#   docker build -t kvserve:latest .                   # with Docker
#   docker build --target runtime-cuda -t kvserve:cuda .
#
# The server reads /etc/kvserve/server.yaml (configs/server.yaml is baked in; mount your own over
# it), finds models under /models (a volume) and API keys in /etc/kvserve/secrets/api-keys. It
# listens on 0.0.0.0:50051 (gRPC), 0.0.0.0:8080 (OpenAI-compatible HTTP) and 0.0.0.0:9464
# (Prometheus /metrics); docs: deploy/README.md.

ARG DEBIAN_IMAGE=debian:bookworm
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04

# ---- build: Debian 12 with the project's own dependency script, Release build -----------------
FROM ${DEBIAN_IMAGE} AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ccache \
 && rm -rf /var/lib/apt/lists/*
# Everything the configure and build steps read: the top CMakeLists.txt and what it include()s
# (cmake/) or add_subdirectory()s (proto/), the sources, and scripts/build.sh.
# tests/server/deploy/dockerfile_build_inputs_test.cc checks this list against the CMake files.
COPY CMakeLists.txt ./
COPY cmake cmake
COPY proto proto
COPY kernels kernels
COPY engine engine
COPY server server
COPY tools tools
COPY scripts scripts
# Portable x86-64 code (AVX2/FMA), not tuned to the build machine. KVSERVE_JOBS caps the
# parallel compile jobs (default: every CPU). A ccache cache mount keeps compiled objects between
# image builds (a rebuild after a source change recompiles only what changed).
ARG KVSERVE_JOBS=
RUN --mount=type=cache,target=/root/.cache/ccache,sharing=locked \
    CCACHE_DIR=/root/.cache/ccache KVSERVE_BUILD_DIR=/build \
      KVSERVE_JOBS=${KVSERVE_JOBS:-$(nproc)} bash scripts/build.sh \
      -DKVSERVE_NATIVE=OFF -DKVSERVE_CUDA=OFF -DKVSERVE_BUILD_TESTS=OFF -DKVSERVE_BUILD_BENCH=OFF \
 && strip /build/kvserve

# ---- runtime: only the shared libraries the binary needs --------------------------------------
FROM ${DEBIAN_IMAGE} AS runtime
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
 && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kvserve \
 && mkdir -p /etc/kvserve/secrets /models
COPY --from=build /build/kvserve /usr/local/bin/kvserve
COPY configs/server.yaml /etc/kvserve/server.yaml
COPY configs/presets /etc/kvserve/presets
# Labels last, so that a new revision reuses the layers above. deploy/scripts/build-image.sh
# sets them from git (`git rev-parse HEAD`, `git describe --tags --always --dirty`).
ARG VCS_REF=unknown
ARG VERSION=unknown
LABEL org.opencontainers.image.title="kvserve" \
      org.opencontainers.image.description="kvserve LLM inference server (CPU forward pass)" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.version="${VERSION}"
USER 10001:10001
VOLUME ["/models"]
# gRPC (server.address) and Prometheus /metrics (metrics.address).
EXPOSE 50051 9464 8080
# gRPC health service (grpc.health.v1): healthy only while SERVING (not while draining).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/kvserve", "client", "health", "--addr", "127.0.0.1:50051", "--timeout", "4"]
# SIGTERM drains: running requests get server.drain_timeout_seconds to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/kvserve", "serve", "--config", "/etc/kvserve/server.yaml"]
# Container defaults over the config file. Listening on every interface requires API keys: mount
# a file of keys, one per line, readable by uid 10001, at /etc/kvserve/secrets/api-keys. Arguments
# after `docker run IMAGE` replace this CMD as a whole (repeat these --set flags, then add yours).
CMD ["--set", "model.path=/models/stories260K.gguf", \
     "--set", "server.address=0.0.0.0:50051", \
     "--set", "metrics.address=0.0.0.0:9464", \
     "--set", "http.address=0.0.0.0:8080", \
     "--set", "server.api_keys_file=/etc/kvserve/secrets/api-keys"]

# ---- CUDA variant -----------------------------------------------------------------------------
FROM ${CUDA_DEVEL_IMAGE} AS cuda-toolkit

FROM build AS build-cuda
COPY --from=cuda-toolkit /usr/local/cuda /usr/local/cuda
ENV PATH=/usr/local/cuda/bin:${PATH}
ARG CUDA_ARCHITECTURES=80;86;89;90
RUN --mount=type=cache,target=/root/.cache/ccache,sharing=locked \
    rm -rf /build && CCACHE_DIR=/root/.cache/ccache KVSERVE_BUILD_DIR=/build \
      KVSERVE_JOBS=${KVSERVE_JOBS:-$(nproc)} bash scripts/build.sh \
      -DKVSERVE_NATIVE=OFF -DKVSERVE_CUDA=ON \
      "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" -DCMAKE_CUDA_RUNTIME_LIBRARY=Static \
      -DKVSERVE_BUILD_TESTS=OFF -DKVSERVE_BUILD_BENCH=OFF \
 && strip /build/kvserve /build/libkvserve_cuda.so

FROM runtime AS runtime-cuda
# engine.device: cuda loads /usr/local/bin/libkvserve_cuda.so, which needs the toolkit's cuBLAS
# (the CUDA runtime is linked in statically); the driver comes from the host (NVIDIA container
# runtime).
USER root
COPY --from=cuda-toolkit /usr/local/cuda/lib64/libcublas.so* /usr/local/cuda/lib64/libcublasLt.so* \
     /usr/local/lib/
RUN ldconfig
USER 10001:10001
COPY --from=build-cuda /build/kvserve /build/libkvserve_cuda.so /usr/local/bin/

# The last stage is the default target of `docker build`.
FROM runtime AS default
