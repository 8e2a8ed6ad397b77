"""``python -m retinaface_ext.train ...`` (what ``torchrun -m`` runs): ``retinaface train``."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
