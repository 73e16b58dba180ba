# walhook: multi-stage build. The builder runs exactly README's release build command (`.ci/run`
# checks that they match); the runtime image is Debian slim with the binary, CA certificates and
# an unprivileged user.
#
#   docker build -t walhook .
#   docker run --rm -v $PWD/config.toml:/etc/walhook/config.toml:ro walhook
#
# Health: the management API serves GET /healthz on [api] listen (docker-compose.yml checks it).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
RUN cargo build --release --locked
RUN strip target/release/walhook

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin walhook \
    && mkdir -p /etc/walhook
COPY --from=build /src/target/release/walhook /usr/local/bin/walhook
COPY config.example.toml /etc/walhook/config.example.toml
USER walhook
EXPOSE 8080
ENTRYPOINT ["walhook"]
CMD ["run", "--config", "/etc/walhook/config.toml"]
