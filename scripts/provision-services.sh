#!/usr/bin/env bash
# Provision everything Kiln's test suite needs on a Debian 12 machine that
# has only the Rust toolchain: system packages, a running RabbitMQ, and a
# single-node Garage S3 server with a `kiln-test` bucket and key.
#
# Idempotent: a second run reuses what is there and takes seconds.
# Writes the S3 settings to "$KILN_CI_STATE/s3.env" (default
# /var/lib/kiln-ci/s3.env) for scripts/test.sh to source.
#
# Environment knobs:
#   KILN_CI_STATE    state directory (default /var/lib/kiln-ci)
#   GARAGE_VERSION   garage version to `cargo install` when absent (2.5.0)
set -euo pipefail

STATE_DIR=${KILN_CI_STATE:-/var/lib/kiln-ci}
GARAGE_VERSION=${GARAGE_VERSION:-2.5.0}
GARAGE_DIR="$STATE_DIR/garage"
GARAGE_CONF="$GARAGE_DIR/garage.toml"
GARAGE_PID="$GARAGE_DIR/garage.pid"
GARAGE_LOG="$GARAGE_DIR/garage.log"
S3_ENV="$STATE_DIR/s3.env"
S3_BUCKET=kiln-test
S3_KEY_NAME=kiln-ci
S3_PORT=3900
RPC_PORT=3901
ADMIN_PORT=3903
AMQP_PORT=5672

log() { printf '[%s] provision: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a command as root (directly, or through sudo when available).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $*"
    fi
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# Poll "$@" every second until it succeeds or $1 seconds pass.
wait_for() {
    local limit=$1 start=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        if [ $((SECONDS - start)) -ge "$limit" ]; then
            return 1
        fi
        sleep 1
    done
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# --- 1. System packages -----------------------------------------------------

pkg_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

install_packages() {
    local missing=()
    # Each entry: package, and a command whose presence also satisfies it.
    local -a wanted=(
        "nix-bin:nix-store"
        "busybox-static:"
        "rabbitmq-server:rabbitmq-server"
        "pkg-config:pkg-config"
        "build-essential:cc"
        "ca-certificates:"
        "curl:curl"
    )
    local entry pkg cmd
    for entry in "${wanted[@]}"; do
        pkg=${entry%%:*}
        cmd=${entry#*:}
        if [ -n "$cmd" ] && command -v "$cmd" >/dev/null 2>&1; then
            continue
        fi
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "system packages already present"
        return
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
}

# Nix 2.8 as root builds as the members of `build-users-group` (nixbld),
# which Debian's nix-bin does not create; the benchmarks and the oracle
# tests run real sandboxed `nix-build`s, so make the group and users the
# way Nix's installer does.
nix_build_users() {
    command -v nix-build >/dev/null 2>&1 || return 0
    if ! getent group nixbld >/dev/null; then
        as_root groupadd --system nixbld
    fi
    local i added=0
    for i in $(seq 1 8); do
        if ! getent passwd "nixbld$i" >/dev/null; then
            as_root useradd --system --no-create-home --home-dir /var/empty \
                --gid nixbld --groups nixbld --shell /usr/sbin/nologin \
                --comment "Nix build user $i" "nixbld$i"
            added=$((added + 1))
        fi
    done
    [ "$added" -eq 0 ] || log "created $added Nix build users (nixbld)"
}

# --- 2. RabbitMQ ------------------------------------------------------------

start_rabbitmq() {
    if port_open "$AMQP_PORT"; then
        log "RabbitMQ already listening on :$AMQP_PORT"
        return
    fi
    log "starting RabbitMQ"
    # The Debian wrapper drops to the rabbitmq user when run as root.
    as_root rabbitmq-server -detached
    if ! as_root timeout 120 rabbitmqctl await_startup >/dev/null 2>&1; then
        log "rabbitmqctl await_startup did not confirm; polling the port"
    fi
    wait_for 60 port_open "$AMQP_PORT" ||
        die "RabbitMQ did not open port $AMQP_PORT (see /var/log/rabbitmq/)"
    log "RabbitMQ is up"
}

# The management API (kiln queues --management, queue rates).
enable_rabbitmq_management() {
    if as_root rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_management; then
        return
    fi
    log "enabling RabbitMQ's management plugin"
    as_root rabbitmq-plugins enable --quiet rabbitmq_management >&2 ||
        log "warning: could not enable rabbitmq_management"
}

# --- 3. Garage --------------------------------------------------------------

find_garage() {
    GARAGE=$(type -P garage || true)
    if [ -z "$GARAGE" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]; then
        GARAGE="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
    fi
    if [ -n "$GARAGE" ]; then
        log "using $GARAGE ($("$GARAGE" --version 2>/dev/null | head -n1))"
        return
    fi
    log "garage not found: cargo install garage $GARAGE_VERSION (takes ~10 min)"
    cargo install garage --version "$GARAGE_VERSION" --locked \
        --no-default-features --features bundled-libs,sqlite,lmdb >&2
    GARAGE="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
    [ -x "$GARAGE" ] || die "cargo install garage did not produce $GARAGE"
}

# The garage CLI, pointed at our config.
gcli() { "$GARAGE" -c "$GARAGE_CONF" "$@"; }

# Write the single-node config; the RPC secret and admin token are made once.
write_garage_config() {
    as_root mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
    as_root chown -R "$(id -u):$(id -g)" "$STATE_DIR"
    chmod 700 "$STATE_DIR" "$GARAGE_DIR"
    local secret_file="$GARAGE_DIR/rpc_secret" token_file="$GARAGE_DIR/admin_token"
    if [ ! -s "$secret_file" ]; then
        (umask 077 && random_hex 32 >"$secret_file")
    fi
    if [ ! -s "$token_file" ]; then
        (umask 077 && random_hex 32 >"$token_file")
    fi
    local wanted
    wanted=$(
        cat <<EOF
# Single-node Garage for Kiln's tests; generated by scripts/provision-services.sh.
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(cat "$secret_file")"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$ADMIN_PORT"
admin_token = "$(cat "$token_file")"
EOF
    )
    if [ -f "$GARAGE_CONF" ] && [ "$(cat "$GARAGE_CONF")" = "$wanted" ]; then
        GARAGE_CONF_CHANGED=0
    else
        (umask 077 && printf '%s\n' "$wanted" >"$GARAGE_CONF")
        GARAGE_CONF_CHANGED=1
        log "wrote $GARAGE_CONF"
    fi
}

# True when the pid file names a live `garage ... server` process.
garage_pid_alive() {
    local pid
    pid=$(cat "$GARAGE_PID" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *garage*" server"* ]]
}

start_garage() {
    if garage_pid_alive; then
        if [ "$GARAGE_CONF_CHANGED" = 1 ]; then
            log "config changed: restarting garage (pid $(cat "$GARAGE_PID"))"
            kill "$(cat "$GARAGE_PID")"
            wait_for 30 bash -c "! kill -0 $(cat "$GARAGE_PID")" ||
                die "garage did not stop"
        else
            log "garage already running (pid $(cat "$GARAGE_PID"))"
            wait_for 30 gcli status || die "running garage does not answer; see $GARAGE_LOG"
            return
        fi
    fi
    local port
    for port in "$S3_PORT" "$RPC_PORT" "$ADMIN_PORT"; do
        port_open "$port" && die "port $port is taken by a process this script did not start"
    done
    log "starting garage server (log: $GARAGE_LOG)"
    setsid nohup "$GARAGE" -c "$GARAGE_CONF" server >>"$GARAGE_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$GARAGE_PID"
    wait_for 60 gcli status || die "garage did not come up; see $GARAGE_LOG"
    wait_for 30 port_open "$S3_PORT" || die "garage S3 API not listening on :$S3_PORT"
    log "garage is up (pid $(cat "$GARAGE_PID"))"
}

# Give this node a role once; later runs find the layout already applied.
apply_layout() {
    local node_id
    node_id=$(gcli node id -q 2>/dev/null | cut -d@ -f1)
    [ -n "$node_id" ] || die "could not read the garage node id"
    local layout
    layout=$(gcli layout show 2>/dev/null || true)
    # (grep reads a variable, not a pipe: with pipefail, `grep -q` closing a
    # pipe early would make the check fail at random.)
    if grep -q "^${node_id:0:16}.*dc1" <<<"$layout"; then
        log "layout already assigns node ${node_id:0:16}"
        return
    fi
    log "assigning layout to node ${node_id:0:16}"
    gcli layout assign -z dc1 -c 1G "$node_id" >/dev/null
    local version
    version=$(gcli layout show | sed -n 's/.*Current cluster layout version: \([0-9]\+\).*/\1/p')
    gcli layout apply --version $((${version:-0} + 1)) >/dev/null
    wait_for 30 gcli status || die "garage unhealthy after layout apply"
}

# Bucket, key (fixed id and secret kept in s3.env) and permissions.
provision_bucket() {
    local key_id="" secret=""
    if [ -s "$S3_ENV" ]; then
        key_id=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$S3_ENV")
        secret=$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$S3_ENV")
    fi
    if [ -z "$key_id" ] || [ -z "$secret" ]; then
        key_id="GK$(random_hex 12)"
        secret=$(random_hex 32)
    fi
    if ! gcli bucket info "$S3_BUCKET" >/dev/null 2>&1; then
        log "creating bucket $S3_BUCKET"
        gcli bucket create "$S3_BUCKET" >/dev/null
    fi
    if ! gcli key info "$key_id" >/dev/null 2>&1; then
        log "importing key $S3_KEY_NAME ($key_id)"
        gcli key import --yes -n "$S3_KEY_NAME" "$key_id" "$secret" >/dev/null
    fi
    gcli bucket allow --read --write --owner "$S3_BUCKET" --key "$key_id" >/dev/null
    local wanted
    wanted=$(
        cat <<EOF
KILN_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
KILN_S3_REGION=garage
KILN_S3_BUCKET=$S3_BUCKET
AWS_ACCESS_KEY_ID=$key_id
AWS_SECRET_ACCESS_KEY=$secret
EOF
    )
    if [ ! -f "$S3_ENV" ] || [ "$(cat "$S3_ENV")" != "$wanted" ]; then
        (umask 077 && printf '%s\n' "$wanted" >"$S3_ENV")
        log "wrote $S3_ENV"
    fi
    log "bucket $S3_BUCKET ready for key $key_id"
}

main() {
    local start=$SECONDS
    install_packages
    nix_build_users
    start_rabbitmq
    enable_rabbitmq_management
    find_garage
    as_root mkdir -p "$STATE_DIR"
    as_root chown "$(id -u):$(id -g)" "$STATE_DIR"
    # Serialise concurrent provisioning runs on this machine.
    exec 9>"$STATE_DIR/provision.lock"
    flock -w 300 9 || die "another provisioning run holds $STATE_DIR/provision.lock"
    write_garage_config
    start_garage
    apply_layout
    provision_bucket
    flock -u 9
    log "services ready in $((SECONDS - start))s; S3 settings in $S3_ENV"
}

main "$@"
