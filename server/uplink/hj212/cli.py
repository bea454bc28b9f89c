"""`greenmine hj212 ...`: field tools for the HJ 212 uplink.

Imports only argparse at load time; the codec is imported by the handler.
"""

from __future__ import annotations

import argparse
import sys

_DECODE_EPILOG = """\
examples:
  greenmine hj212 decode '##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80'
  grep -o '##[^ ]*' platform.log | greenmine hj212 decode

Quote frames on the command line: ';' and '&' are shell syntax.
Each frame prints as one JSON object per line on stdout. A frame that does not
decode prints 'frame N: <reason>' on stderr (e.g. 'CRC mismatch: got 1C81,
computed 1C80') and the exit status is 2 once all frames are done.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hj212", help="HJ 212-2017 uplink tools (decode frames)",
        description="Tools for the HJ 212-2017 uplink to environmental platforms.",
    )
    hsub = p.add_subparsers(dest="hj212_command", metavar="COMMAND", required=True)
    d = hsub.add_parser(
        "decode", help="decode HJ 212 frames to JSON and explain bad ones",
        description="Decode HJ 212 frames (##dddd...CCCC) and print each as JSON. "
        "Checks the length, the CRC and the structure, and says precisely what is wrong.",
        epilog=_DECODE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("frames", nargs="*", metavar="FRAME", help="frames to decode; if none, one frame per line is read from stdin")
    d.add_argument("--pretty", action="store_true", help="indent the JSON (default: one object per line)")
    d.set_defaults(func=_decode)


def _decode(args: argparse.Namespace) -> int:
    import json

    from greenmine.server.uplink.hj212.codec import FrameError, parse_frame

    frames = args.frames if args.frames else (line for line in sys.stdin if line.strip())
    status = 0
    for n, text in enumerate(frames, start=1):
        text = text.strip()
        # Frames copied from logs often show the terminator as literal text.
        for escaped in ("\\r\\n", "\\n"):
            text = text.removesuffix(escaped)
        try:
            frame = parse_frame(text)
        except FrameError as exc:
            print(f"frame {n}: {exc}", file=sys.stderr)
            status = 2
            continue
        print(json.dumps(frame.to_dict(), ensure_ascii=False, indent=2 if args.pretty else None))
    return status
