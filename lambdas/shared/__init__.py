"""Code every function bundles (stacks/constructs/python_function.py copies this package)."""
