"""xDS sidecar fixtures: the pilot's (a real `sofamesh pilot` process)."""

from tests.integration.pilot.conftest import pilot  # noqa: F401 - a fixture
from tests.integration.registries.conftest import zookeeper  # noqa: F401 - a fixture
