#!/bin/sh
# Write the compose secrets into docker/secrets/ (git-ignored), once; existing files are kept.
# Hex values: they need no quoting in a URL or a shell. The directory is private to you; the files
# are readable by the containers' users, which see them under /run/secrets.
set -eu
dir="$(dirname "$0")/secrets"
mkdir -p "$dir" && chmod 700 "$dir"
new() { [ -s "$dir/$1" ] || { umask 022; printf '%s' "$2" > "$dir/$1"; echo "wrote $dir/$1"; }; }
new minio_root_user neat-admin
new minio_root_password "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
new neat_worker_secret_key "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
