# syntax=docker/dockerfile:1
# The Kiln image: the one `kiln` binary, which runs every role (coordinator,
# evaluator, builder, store gateway) and every user command.
#
#   docker build -t kiln:local .
#
# The build stage and the runtime stage use the same Debian release, so the
# binary finds the glibc it was linked against.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# cmake: aws-lc-sys (the TLS crypto of the S3 client) builds with it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The workspace's default member is the CLI: this builds target/release/kiln.
# The caches keep crates and build artefacts between image builds; the
# binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/kiln /out/kiln

FROM debian:${DEBIAN_RELEASE}-slim
# tini is PID 1: it forwards SIGTERM to kiln (which drains on it) and
# reaps any process a build leaves behind. ca-certificates: TLS to S3 and
# RabbitMQ.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kiln \
    && useradd --system --uid 10001 --gid kiln --home-dir /var/lib/kiln --shell /usr/sbin/nologin kiln \
    && install -d -o kiln -g kiln -m 0755 /var/lib/kiln /var/lib/kiln/work \
    && install -d -m 0755 /var/cache/kiln
COPY --from=build /out/kiln /usr/local/bin/kiln
# The example package set: its toolchain is this image's own dash and
# glibc, so a first build needs nothing else (see the chart's NOTES).
COPY examples /usr/share/kiln/examples
# The image runs as root because builders need it (their sandbox creates
# namespaces, mounts and per-build users); the chart and compose.yaml run
# the coordinator, evaluators and store gateway as uid 10001.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/kiln"]
CMD ["--help"]
