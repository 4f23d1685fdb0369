#!/bin/sh
# Run once by compose's minio-init service (as MinIO's root user): create the buckets and the worker's
# user, whose policy reaches those buckets only. Secrets are read from /run/secrets files and passed
# through the environment (MC_HOST_local) or stdin, never as command-line arguments.
set -eu
root_user=$(cat /run/secrets/minio_root_user)
root_password=$(cat /run/secrets/minio_root_password)  # hex (docker/make-secrets.sh): safe inside a URL
export MC_HOST_local="http://${root_user}:${root_password}@minio:9000"
unset root_password
until mc admin info local >/dev/null 2>&1; do sleep 1; done
mc mb --ignore-existing local/neat-dvc local/neat-models local/neat-incoming
# `mc admin user add ALIAS ACCESSKEY` reads the secret key from stdin when it is not an argument
mc admin user add local "$NEAT_WORKER_ACCESS_KEY" < /run/secrets/neat_worker_secret_key
mc admin policy create local neat-worker /etc/neat/worker-policy.json
mc admin policy attach local neat-worker --user "$NEAT_WORKER_ACCESS_KEY" || true  # already attached on a rerun
