"""Data: video reading, SynthActions, annotations, the sparse label store, and clip streaming.

Everything here except `stream.py` runs without Ray.
"""
