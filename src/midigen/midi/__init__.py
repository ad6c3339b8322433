"""MIDI in and out: the ground floor, which every encoding and stage above it reads."""
