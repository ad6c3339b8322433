"""Models: the transformer and its memories (XL, kNN), the LSTM baseline, the variants
built from them, and training."""
