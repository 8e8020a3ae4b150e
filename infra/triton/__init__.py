"""Triton itself: the tritonserver process, its model repository, and what each release fixes."""
