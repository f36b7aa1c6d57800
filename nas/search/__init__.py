"""The search: the driver, Ray Tune's trials, the run folder, objectives, compare and calibrate."""

import os
import sys

# A cluster that ray.init starts uses token authentication, but a driver that joins one by
# address (the local cluster's holder, nas.search.cluster) sends its token only when
# RAY_AUTH_MODE says so -- read when Ray is imported, so set here only if it is not imported yet
# (a token is also accepted by a cluster without authentication).
if "ray" not in sys.modules:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
