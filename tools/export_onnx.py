"""Deprecated: use tools/export.py, which writes ONNX and OpenVINO, fp32, int8 and bf16.

python tools/export_onnx.py ARGS  ==  python tools/export.py --format onnx ARGS
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools import export
from tools.common import configure_logging

logger = logging.getLogger("transreid.tools")

build_parser = export.build_parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logger.warning("tools/export_onnx.py is deprecated: use tools/export.py --format onnx")
    return export.main(["--format", "onnx", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
