"""``make demo``: transcode a generated 4K sample progressively and print the timeline."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.cli import main as rungs_main
from engine.sample import make_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="3840x2160")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    sample = args.out / f"sample-{args.size}-{args.seconds:g}s.mp4"
    if not sample.exists():
        print(f"generating {sample} ({args.size}, {args.seconds:g} s, with audio) ...")
        started = time.monotonic()
        make_sample(sample, width=width, height=height, seconds=args.seconds)
        print(f"generated in {time.monotonic() - started:.1f} s")
    hls = args.out / "hls"
    code = rungs_main(["transcode", str(sample), str(hls), "--overwrite"])
    if code == 0:
        print(f"master playlist: {hls / 'master.m3u8'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
