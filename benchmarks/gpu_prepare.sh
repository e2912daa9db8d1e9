#!/usr/bin/env bash
# Prepare what a lent GPU box (Python 3.12, torch, no pymatgen/matgl/chgnet) needs for the
# training and benchmark scripts: cp312 wheels in .whl/ and data + oracle weights in
# .devdata/ (both git-ignored; pass them as the device call's `carry`). Prints the size that
# would travel: the tracked tree plus these must stay under 64 MiB.
#
#   bash benchmarks/gpu_prepare.sh            # then, on the device:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD MATDESIGN_DATA_DIR=$PWD/.devdata/data \
#          MATDESIGN_MODELS_DIR=$PWD/.devdata/models
set -euo pipefail
SHARED=${SHARED:-../shared}
mkdir -p .whl .devdata/data/mp20 .devdata/data/mp2018 .devdata/data/perov5 .devdata/models
dl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "$@"
}
# pydantic-core must be the version this pydantic pins (the box's own is older).
dl matgl==4.1.2 pymatgen==2026.10.24 pymatgen-core monty spglib ruamel.yaml ruamel.yaml.clib \
  uncertainties palettable tabulate chgnet==0.4.2 torchdata orjson ase smact \
  pydantic==2.13.4 pydantic-core==2.46.4 pydantic-settings python-dotenv annotated-types \
  typing-inspection pyxtal==1.1.5
# The job runner's store (job_profile.py: SQLite). (plotly, imported by pymatgen's phase
# diagram for plotting only, is too big to carry: benchmarks/gpu_env.sh stands in for it.)
dl sqlalchemy greenlet
# SevenNet (the default energy judge): the box has e3nn; keep only the two checkpoints the
# oracles use (l3i5, SevenNet-0 11Jul2024) and drop the LAMMPS/D3 binaries (30 MB).
dl sevenn==0.13.0 matscipy braceexpand
zip -q -d .whl/sevenn-*.whl 'sevenn/pretrained_potentials/SevenNet_0__22May2024/*' \
  'sevenn/pretrained_potentials/SevenNet_MF_0/*' 'sevenn/pair_e3gnn/*' 'sevenn/*.so' || true
# chgnet imports nvidia_smi, which exists only as an sdist.
(cd .whl && python3 -m pip wheel -q --no-deps nvidia-ml-py3)
# The oracles use CHGNet 0.3.0 only: drop the other bundled weights (9 MB).
zip -q -d .whl/chgnet-*.whl 'chgnet/pretrained/r2scan/*' 'chgnet/pretrained/0.2.0/*' || true
cp "$SHARED"/data/mp20/*.csv.gz .devdata/data/mp20/
cp "$SHARED"/data/mp2018/*.csv.gz .devdata/data/mp2018/
cp "$SHARED"/data/perov5/*.csv.gz .devdata/data/perov5/
cp -r "$SHARED"/models/matgl .devdata/models/
# The data sets once more as xz of the plain CSVs (12 MB, not 18): what GPU calls carry
# (.devpack), unpacked on the box by benchmarks/gpu_env.sh.
mkdir -p .devpack /tmp/devpack && rm -rf /tmp/devpack/*
for f in .devdata/data/*/*.csv.gz; do
  d=/tmp/devpack/$(basename "$(dirname "$f")"); mkdir -p "$d"; zcat "$f" > "$d/$(basename "$f" .gz)"
done
tar -C /tmp/devpack -cf - . | xz -9 -T0 > .devpack/data.tar.xz
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
extra=$(du -cb .whl .devpack .devdata/models | tail -1 | cut -f1)
echo "tracked $((tracked / 1048576)) MiB + carry $((extra / 1048576)) MiB (limit 64 MiB)"
echo "over the limit? move checkpoints a run does not need out of the tree for that call"
