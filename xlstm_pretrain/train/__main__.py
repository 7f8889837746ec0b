"""``python -m xlstm_pretrain.train`` (see trainer.py)."""

import sys

from .trainer import main

sys.exit(main())
