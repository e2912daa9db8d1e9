# Source this at the top of every GPU script (bash): the box (Python 3.12, torch, no
# pymatgen/matgl/chgnet/sevenn) gets the cp312 wheels from .whl/, the data sets unpacked from
# .devpack/data.tar.xz (xz of the uncompressed CSVs: 12 MB instead of 18 MB of csv.gz, which
# matters under a call's 64 MiB limit) and the settings pointing at them. Idempotent.
#   carry: .whl .devpack .devdata/models   (bash benchmarks/gpu_prepare.sh first), or
#          .callpack .devpack .devdata/models (benchmarks/gpu_stage.sh)
# LOCAL=1 (a script's CPU smoke run on this machine): the installed packages and this checkout.
if [ -n "${LOCAL:-}" ]; then
  export PYTHONPATH=$PWD
  return 0
fi
if [ -z "${MATDESIGN_GPU_ENV:-}" ]; then
  if [ -f .callpack/site.tar.xz ]; then  # benchmarks/gpu_stage.sh: wheels sent unpacked
    mkdir -p /tmp/site && tar -C /tmp/site -xJf .callpack/site.tar.xz || return 1
    [ -f .callpack/weights.tar.xz ] && { tar -C ml/weights -xJf .callpack/weights.tar.xz || return 1; }
  else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
      .whl/*.whl || return 1
  fi
  # pymatgen.analysis.phase_diagram imports plotly at module level, for plotting only; the box
  # has none and its 10 MB wheel does not fit a call, so an empty module stands in for it.
  mkdir -p /tmp/site/plotly && : > /tmp/site/plotly/__init__.py && : > /tmp/site/plotly/graph_objects.py
  if [ -f .devpack/data.tar.xz ] && [ ! -d .devdata/data/mp20 ]; then
    mkdir -p .devdata/data && tar -C .devdata/data -xJf .devpack/data.tar.xz &&
      find .devdata/data -name '*.csv' -print0 | xargs -0 -P 16 -n 1 gzip -1
  fi
  export PYTHONPATH=/tmp/site:$PWD MATDESIGN_DATA_DIR=$PWD/.devdata/data \
    MATDESIGN_MODELS_DIR=$PWD/.devdata/models PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore \
    MATDESIGN_GPU_ENV=1
fi
