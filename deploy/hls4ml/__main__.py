"""Entry point: ``python -m deploy.hls4ml --artifact DIR [--layer NAME] --backend Vitis|Vivado ...``."""
import sys

from .cli import main

sys.exit(main())
