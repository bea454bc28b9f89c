"""Uplinks: the server's feeds to outside platforms.

Each uplink is one subpackage with one config model:
`hj212` speaks HJ 212-2017 to environmental monitoring platforms.
"""
