"""The search: the driver, Ray Tune's trials, the run folder, objectives, compare and calibrate."""

import os

# Ray reads this when it is imported. A cluster that ray.init starts uses token authentication,
# but a driver that joins one by address (the local cluster's holder, nas.search.cluster) only
# sends its token when told to; a token is also accepted by a cluster without authentication.
os.environ.setdefault("RAY_AUTH_MODE", "token")
