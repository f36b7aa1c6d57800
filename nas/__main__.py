"""``python -m nas`` is the ``nasfpn`` command."""

import sys

from nas.cli import main

sys.exit(main())
