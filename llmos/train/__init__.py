"""Training: the shared loop (`loop.py`) and the jobs built on it (`pretrain.py`)."""
