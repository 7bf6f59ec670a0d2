"""Convert a model directory (Hugging Face or rollax) into rollax's own checkpoint (orbax).

    python -m scripts.convert SRC DST [--dtype bfloat16]

The result loads bit-exactly with ``models.load(DST)`` (its tokenizer file included), in the
dtype it was written in: a Hugging Face checkpoint is read as float32 unless ``--dtype`` says
otherwise. Reading a Hugging Face directory directly works too; converting once fixes the dtype
and lets a sharded ``models.load(DST, mesh=...)`` restore each device's part with orbax.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import models


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a model directory (Hugging Face or rollax) or a shipped name")
    ap.add_argument("dst", type=Path, help="the directory to write (created; an existing rollax checkpoint, SRC "
                                           "itself included, is replaced in one atomic step; anything else is refused)")
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: as models.load reads it)")
    args = ap.parse_args(argv)
    model = models.load(args.src, dtype=args.dtype)
    model.save(args.dst)
    c = model.config
    print(f"{args.src} -> {args.dst}: {c.family}, {c.num_params:,} parameters, {c.dtype}, "
          f"tokenizer: {type(model.tokenizer).__name__ if model.tokenizer else 'none'}")
    return 0


if __name__ == "__main__":
    from scripts import cli
    cli.run(main)
