"""The deterministic synthetic world: pretraining people, fine-tuning authors, QA splits, tokenizer.

`prepare_data(cfg, out_dir)` writes everything the later stages read; see `forgetlab.data.world`.
"""

from forgetlab.data.world import prepare_data

__all__ = ["prepare_data"]
