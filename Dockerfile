# The controller's image: `docker build -t rollwright:0.1.0 .`, then
# `rollwright controller manifests --image rollwright:0.1.0 | kubectl apply -f -`.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rollwright

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/rollwright /usr/local/bin/rollwright
# The manifests' Deployment runs it as this user with a read-only root
# filesystem; /tmp/rollwright is an emptyDir for the runs' local journal copies.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/rollwright"]
CMD ["controller", "--listen", "0.0.0.0:8080"]
