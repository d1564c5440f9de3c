"""Queries: what a text, image or vector query may be, and the records results come in."""
