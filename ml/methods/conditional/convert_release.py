"""Store a Wyckoff-generator release's weights in float16, so a network of up to ~7 M
parameters fits the 16 MiB a committed checkpoint may take:

    python -m ml.methods.conditional.convert_release /tmp/conditional-wyckoff.pt \\
        ml/weights/conditional-wyckoff.pt --dtype float16
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ml.methods.conditional.checkpoint import RELEASE_DTYPES, convert_wyckoff_release


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--dtype", choices=tuple(RELEASE_DTYPES), default="float16")
    args = p.parse_args(argv)
    convert_wyckoff_release(args.src, args.dst, args.dtype)
    print(f"{args.dst}: {args.dst.stat().st_size / 2**20:.2f} MiB ({args.dtype} weights)")


if __name__ == "__main__":
    main()
