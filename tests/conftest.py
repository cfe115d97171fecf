"""Shared test configuration: Hypothesis profiles.

The ``ci`` profile (used when ``CI`` is set, and by default) runs at least 200 examples per
property; ``dev`` runs fewer for quick local iterations (``HYPOTHESIS_PROFILE=dev``).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
    print_blob=True,
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
