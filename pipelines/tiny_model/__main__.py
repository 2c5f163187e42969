"""``python -m pipelines.tiny_model``: rebuild and retrain the embedded checkpoint."""

import sys

from pipelines.tiny_model.train import main

sys.exit(main())
