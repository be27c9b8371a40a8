"""Reusable Constructs: each exposes its resources; the stacks wire the grants between them."""
