# kvserve container image (first version: builds the CPU binary and runs offline generation).
# Build stage: Debian 12 with the project's own dependency script.
FROM debian:bookworm AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN bash scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
# Portable x86-64 code (AVX2/FMA), not tuned to the build machine.
RUN KVSERVE_BUILD_DIR=/build bash scripts/build.sh -DKVSERVE_NATIVE=OFF -DKVSERVE_CUDA=OFF \
      -DKVSERVE_BUILD_TESTS=OFF -DKVSERVE_BUILD_BENCH=OFF

# Runtime stage: only the shared libraries the binary needs.
FROM debian:bookworm AS runtime
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN bash /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh
RUN useradd --system --uid 10001 --home /nonexistent kvserve
COPY --from=build /build/kvserve /usr/local/bin/kvserve
USER kvserve
ENTRYPOINT ["/usr/local/bin/kvserve"]
CMD ["generate", "--model", "/models/stories260K.gguf", "--prompt", "Once upon a time"]
