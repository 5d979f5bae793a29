# Build: a release binary with the migrations embedded.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY build.rs ./
COPY benches ./benches
RUN cargo build --release --locked --bin vault-relay

# Run: the binary and the viewer's static files, as an unprivileged user.
FROM debian:bookworm-slim
RUN useradd --system --home /app relay
WORKDIR /app
COPY --from=build /src/target/release/vault-relay /usr/local/bin/vault-relay
COPY web ./web
USER relay
ENV PORT=3000
EXPOSE 3000
ENTRYPOINT ["vault-relay"]
