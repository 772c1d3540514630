#!/bin/sh
# One-shot set-up of compose.yaml's Garage: give the single node a layout,
# import the key the Kiln services use and create their bucket. Idempotent:
# a second run finds everything in place and changes nothing.
#
# Environment: KILN_S3_KEY_ID, KILN_S3_SECRET, KILN_S3_BUCKET; the garage
# CLI reads /etc/garage.toml and the node's key from its metadata directory.
set -eu

: "${KILN_S3_KEY_ID:?}" "${KILN_S3_SECRET:?}" "${KILN_S3_BUCKET:?}"
GARAGE=${GARAGE:-garage}

log() { printf 'garage-init: %s\n' "$*" >&2; }

# The server may still be starting: wait for the CLI to reach it.
tries=0
until "$GARAGE" status >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        log "garage does not answer"
        "$GARAGE" status
        exit 1
    fi
    sleep 1
done

node_id=$("$GARAGE" node id -q | cut -d@ -f1)
[ -n "$node_id" ] || { log "no node id"; exit 1; }
short=$(printf '%s' "$node_id" | cut -c1-16)

layout=$("$GARAGE" layout show)
if printf '%s\n' "$layout" | grep -q "^$short.*dc1"; then
    log "layout already assigns node $short"
else
    log "assigning the layout to node $short"
    "$GARAGE" layout assign -z dc1 -c 1G "$node_id" >/dev/null
    version=$("$GARAGE" layout show | sed -n 's/.*Current cluster layout version: \([0-9][0-9]*\).*/\1/p')
    "$GARAGE" layout apply --version $((${version:-0} + 1)) >/dev/null
fi

if "$GARAGE" key info "$KILN_S3_KEY_ID" >/dev/null 2>&1; then
    log "key $KILN_S3_KEY_ID present"
else
    log "importing key $KILN_S3_KEY_ID"
    "$GARAGE" key import --yes -n kiln "$KILN_S3_KEY_ID" "$KILN_S3_SECRET" >/dev/null
fi

if "$GARAGE" bucket info "$KILN_S3_BUCKET" >/dev/null 2>&1; then
    log "bucket $KILN_S3_BUCKET present"
else
    log "creating bucket $KILN_S3_BUCKET"
    "$GARAGE" bucket create "$KILN_S3_BUCKET" >/dev/null
fi
"$GARAGE" bucket allow --read --write --owner "$KILN_S3_BUCKET" --key "$KILN_S3_KEY_ID" >/dev/null
log "bucket $KILN_S3_BUCKET ready for key $KILN_S3_KEY_ID"
