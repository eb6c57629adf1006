#!/usr/bin/env python3
"""Print the digest of the scoring code (``shelfsight.bench.identity.SCORING_MODULES``) and whether it is the
one recorded as ``SCORING_DIGEST``; ``--write`` records it.

Raise ``SCORING_VERSION`` first when the change moves a number a cell stores (every stored cell is then
recomputed once); a change that cannot (a rename, a refactor with equal results) records the digest alone.

    python scripts/scoring_digest.py [--write]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from shelfsight.bench import identity


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="record the digest in bench/identity.py")
    args = parser.parse_args()
    current = identity.scoring_code_digest()
    print(f"SCORING_VERSION = {identity.SCORING_VERSION}")
    print(f"recorded SCORING_DIGEST = {identity.SCORING_DIGEST}")
    print(f"current scoring digest  = {current}")
    if current == identity.SCORING_DIGEST:
        print("up to date")
        return 0
    if not args.write:
        print("differs: raise SCORING_VERSION if a stored number can change, then rerun with --write")
        return 1
    source = Path(identity.__file__)
    text, count = re.subn(r'^SCORING_DIGEST = "[0-9a-f]*"$', f'SCORING_DIGEST = "{current}"',
                          source.read_text(encoding="utf-8"), flags=re.MULTILINE)
    if count != 1:
        print(f"{source}: no single `SCORING_DIGEST = \"...\"` line to replace")
        return 2
    source.write_text(text, encoding="utf-8")
    print(f"written to {source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
