# syntax=docker/dockerfile:1
# The single `prism` binary (built-in patterns embedded) on a slim base,
# running as a non-root user. Build: docker build -t prism .
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release -p prism \
 && strip target/release/prism

FROM debian:bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/prism --create-home prism
COPY --from=build /src/target/release/prism /usr/local/bin/prism
USER 10001
# Precompiled patterns are cached here (a volume keeps restarts warm).
ENV XDG_CACHE_HOME=/var/lib/prism/cache
EXPOSE 8980
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["prism", "health", "--addr", "127.0.0.1:8980"]
ENTRYPOINT ["prism"]
CMD ["serve", "--config", "/etc/prism/prism.toml"]
