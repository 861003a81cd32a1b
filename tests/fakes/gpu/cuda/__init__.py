"""Stand-in for cuda-python on a machine without a GPU (see tensorrt/__init__.py)."""
