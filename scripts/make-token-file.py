#!/usr/bin/env python3
"""Writes a ringattn token file from text or from integers: the file `data.token_file` names when
`data.source = tokens`.

Format (model/data/token_file.h; all integers little-endian):
  offset 0   8 bytes  magic b"RATOKENS"
  offset 8   u32      version = 1
  offset 12  u32      token width in bytes: 2 (uint16 tokens) or 4 (uint32 tokens)
  offset 16  u64      token count N (>= 1)
  offset 24  N tokens of that width
The file must be exactly 24 + N * width bytes long; the trainer rejects anything else.

  make-token-file.py --bytes corpus.txt out.tokens        # one token per byte (ids 0..255)
  make-token-file.py --ints ids.txt out.tokens            # whitespace-separated token ids
  make-token-file.py --ints ids.txt out.tokens --width 4  # ids >= 65536 need 4-byte tokens
"""
import argparse
import struct
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bytes", metavar="FILE", help="tokenize FILE byte by byte")
    src.add_argument("--ints", metavar="FILE", help="read whitespace-separated token ids from FILE ('-': stdin)")
    ap.add_argument("output")
    ap.add_argument("--width", type=int, choices=(2, 4), default=None,
                    help="token width in bytes (default: 2 when every id fits, else 4)")
    args = ap.parse_args()

    if args.bytes:
        with open(args.bytes, "rb") as f:
            tokens = list(f.read())
    else:
        text = sys.stdin.read() if args.ints == "-" else open(args.ints).read()
        tokens = [int(t) for t in text.split()]
    if not tokens:
        sys.exit("make-token-file: no tokens to write (an empty token file is rejected by the trainer)")
    bad = [(i, t) for i, t in enumerate(tokens) if t < 0 or t >= 2**32]
    if bad:
        sys.exit(f"make-token-file: token {bad[0][1]} at index {bad[0][0]} is not a uint32")
    width = args.width or (2 if max(tokens) < 2**16 else 4)
    if width == 2 and max(tokens) >= 2**16:
        i = next(i for i, t in enumerate(tokens) if t >= 2**16)
        sys.exit(f"make-token-file: token {tokens[i]} at index {i} does not fit in 2 bytes; use --width 4")

    fmt = "<%d%s" % (len(tokens), "H" if width == 2 else "I")
    with open(args.output, "wb") as f:
        f.write(b"RATOKENS" + struct.pack("<IIQ", 1, width, len(tokens)))
        f.write(struct.pack(fmt, *tokens))
    print(f"{args.output}: {len(tokens)} tokens of {width} bytes, max id {max(tokens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
