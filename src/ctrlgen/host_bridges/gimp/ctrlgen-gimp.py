#!/usr/bin/env python3
"""ctrlgen's GIMP 3 plug-in: the file GIMP runs (``plug-ins/ctrlgen-gimp/ctrlgen-gimp.py``).

The work is in the ``ctrlgen_gimp`` package beside this file (``ctrlgen install gimp`` copies
both, and the bridge client, into GIMP's plug-ins folder).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ctrlgen_gimp.plugin import main  # noqa: E402

main()
