"""Data: downloading MIDI, reading and writing it, the corpus and its shards, batching."""
