"""Command-line tools around training: data selection, DPO pairs, sweeps, conversion, augmentation, tokenizer training."""
