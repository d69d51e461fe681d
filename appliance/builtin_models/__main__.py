"""Entry point of ``python -m appliance.builtin_models`` (the install step)."""

import sys

from appliance.builtin_models import main

sys.exit(main())
