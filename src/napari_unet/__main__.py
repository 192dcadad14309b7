"""``python -m napari_unet`` is the ``napari-unet`` command (also under ``torchrun``)."""

import sys

from napari_unet.cli import main

sys.exit(main())
