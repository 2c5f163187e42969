"""``python -m tiny_model``: rebuild and retrain the embedded checkpoint."""

import sys

from tiny_model.train import main

sys.exit(main())
