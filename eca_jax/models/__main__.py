"""``python -m eca_jax.models eca_resnet50`` / ``--list`` / ``--pretrained``.

``--pretrained`` prints the published weights (source, top-1, licence, cached or not, sizes), the
table of ``python -m eca_jax.pretrained``.
"""
import sys

if "--pretrained" in sys.argv[1:]:
    from eca_jax.pretrained.listing import table   # a command line may use any layer (tests/test_layering.py)
    print(table())
    sys.exit(0)

from eca_jax.models.summary import main  # noqa: E402

main()
