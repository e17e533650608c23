"""``python -m eca_jax.pretrained``: every published weight (source, top-1, licence), cached or not, with sizes.

``python -m eca_jax.models --pretrained`` prints the same table.
"""
import argparse

from eca_jax.pretrained.listing import table

argparse.ArgumentParser(prog="python -m eca_jax.pretrained", description=__doc__.splitlines()[0]).parse_args()
print(table())
