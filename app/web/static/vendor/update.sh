#!/usr/bin/env bash
# Re-fetch the vendored 3Dmol.js from the npm registry (version pinned here). Swagger UI and
# ReDoc come from the fastapi-offline wheel (pyproject.toml), not from this folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent 3dmol@2.5.5 >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
cp 3dmol-2.5.5/package/build/3Dmol-min.js{,.LICENSE.txt} 3dmol-2.5.5/package/LICENSE "$here/3dmol/"
