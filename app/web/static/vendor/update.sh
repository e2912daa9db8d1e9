#!/usr/bin/env bash
# Re-fetch the vendored browser libraries from the npm registry (versions pinned here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
npm pack --silent 3dmol@2.5.5 swagger-ui-dist@5.35.0 redoc@2.5.4 >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
cp 3dmol-2.5.5/package/build/3Dmol-min.js{,.LICENSE.txt} 3dmol-2.5.5/package/LICENSE "$here/3dmol/"
s=swagger-ui-dist-5.35.0/package
cp $s/swagger-ui-bundle.js{,.LICENSE.txt} $s/swagger-ui.css $s/favicon-32x32.png $s/LICENSE $s/NOTICE \
  "$here/swagger-ui/"
cp redoc-2.5.4/package/bundles/redoc.standalone.js{,.LICENSE.txt} redoc-2.5.4/package/LICENSE \
  "$here/redoc/"
