# Leaseline in a container: built in one stage, run in a slim one as a non-root user, its
# state in a volume. Build and run (README, "Installing"):
#   docker build -t leaseline .
#   docker run -d --name leaseline -p 8080:8080 \
#     -v "$PWD/pool.toml:/etc/leaseline/pool.toml:ro" -v leaseline-data:/var/lib/leaseline leaseline
# The mounted pool.toml must listen on 0.0.0.0:8080 (the container's loopback is unreachable)
# and keep its data in data_dir = "/var/lib/leaseline" (the volume).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin leaseline

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/leaseline --shell /usr/sbin/nologin leaseline \
 && mkdir -p /var/lib/leaseline /etc/leaseline \
 && chown leaseline:leaseline /var/lib/leaseline && chmod 0700 /var/lib/leaseline
COPY --from=build /src/target/release/leaseline /usr/local/bin/leaseline
USER leaseline
ENV LEASELINE_CONFIG=/etc/leaseline/pool.toml
VOLUME /var/lib/leaseline
EXPOSE 8080
# SIGTERM drains requests and flushes (drain_timeout, 10 s): give `docker stop -t 30` room.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/leaseline"]
CMD ["serve"]
