"""`python -m keras_contrastive` runs the `keras-contrastive` command."""

import sys

from keras_contrastive.cli import main

sys.exit(main())
