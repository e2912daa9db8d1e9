#!/usr/bin/env bash
# Pack one lent-GPU call into the 64 MiB it may carry (device README, Limits). The wheels are
# sent unpacked and xz-compressed (31 MB instead of 38 MB of zip wheels) and only the
# checkpoints the call needs travel, xz-compressed, in .callpack/; the others are moved to
# .cache/weights_aside/ until `gpu_stage.sh restore`. benchmarks/gpu_env.sh unpacks both.
#
#   WEIGHTS="matinvent-prior.pt conditional-wyckoff.pt bandgap_chgnet.pt" SEVENN=1 SQL=0 \
#     bash benchmarks/gpu_stage.sh           # carry: .callpack .devpack .devdata/models
#   bash benchmarks/gpu_stage.sh restore     # after the call: the tree as it was
# Needs the wheel set of benchmarks/gpu_prepare.sh (kept whole in .cache/whl_all/).
set -euo pipefail
ASIDE=.cache/weights_aside
restore() {
  [ -d "$ASIDE" ] && find "$ASIDE" -maxdepth 1 -name '*.pt' -exec mv -n {} ml/weights/ \;
  if [ -d "$ASIDE/files" ]; then (cd "$ASIDE/files" && find . -type f) | while read -r f; do
    mv -n "$ASIDE/files/$f" "$f"; done; rm -rf "$ASIDE/files"; fi
  true
}
if [ "${1:-}" = restore ]; then restore; rm -rf .callpack; git status --short ml/weights; exit 0; fi
restore
mkdir -p .cache/whl_all "$ASIDE" .callpack
[ -n "$(ls .whl/*.whl 2>/dev/null)" ] && cp -n .whl/*.whl .cache/whl_all/
SEVENN=${SEVENN:-1}; SQL=${SQL:-0}
variant=site_s${SEVENN}_q${SQL}
if [ ! -f ".cache/$variant.tar.xz" ]; then
  work=$(mktemp -d)
  for w in .cache/whl_all/*.whl; do
    name=$(basename "$w")
    case $name in
      sqlalchemy-*|greenlet-*) [ "$SQL" = 1 ] || continue ;;
      sevenn-*|matscipy-*|braceexpand-*) [ "$SEVENN" = 1 ] || continue ;;
    esac
    unzip -q -o "$w" -d "$work"
  done
  # The oracles use SevenNet-l3i5 only (SevenNet-0 is a selectable, rarely used oracle).
  rm -rf "$work"/sevenn/pretrained_potentials/SevenNet_0__11Jul2024 "$work"/*.data
  tar -C "$work" -cf - . | xz -9 -T0 > ".cache/$variant.tar.xz"
  rm -rf "$work"
fi
cp ".cache/$variant.tar.xz" .callpack/site.tar.xz
for f in ml/weights/*.pt; do
  case " ${WEIGHTS:-} " in *" $(basename "$f") "*) ;; *) mv "$f" "$ASIDE/" ;; esac
done
rm -f .callpack/weights.tar.xz
if [ -n "${WEIGHTS:-}" ]; then
  # shellcheck disable=SC2086
  tar -C ml/weights -cf - ${WEIGHTS} | xz -9 -T0 > .callpack/weights.tar.xz
  for w in ${WEIGHTS}; do mv "ml/weights/$w" "$ASIDE/"; done
fi
# Tables the call's judge does not use.
for f in ${DROP:-}; do [ -f "$f" ] && mkdir -p "$ASIDE/files/$(dirname "$f")" && mv "$f" "$ASIDE/files/$f"; done
tracked=$( (git ls-files -z | xargs -0 du -cb 2>/dev/null || true) | tail -1 | cut -f1)
extra=$(du -cb .callpack .devpack .devdata/models | tail -1 | cut -f1)
echo "tracked $tracked + carry $extra = $((tracked + extra)) bytes (limit $((64 * 1048576)))"
