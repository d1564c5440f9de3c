"""The demo: a generated world of coloured shapes and the small model bundled for it."""
