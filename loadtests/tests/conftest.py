"""The load's modules are imported as Locust imports them: from the folder of the locustfile."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
