"""A ``sipbot run`` config for tests that send from one address more than the per-source limits
allow on purpose (a torture barrage, hundreds of SIPp calls): the embedded default with
``server.limits.per_source_*`` raised out of the way. The limits themselves are tested in
``test_hostile_input_e2e.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.e2e.conftest import REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "sipbot" / "data" / "default.yaml"
UNLIMITED = {"per_source_calls": 100_000, "per_source_rps": 100_000, "per_source_burst": 100_000}


def one_source_config(dest: Path, **limits: Any) -> Path:
    """Write the default config with per-source limits raised (plus ``limits``) to ``dest``."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config["server"]["limits"] = {**UNLIMITED, **limits}
    dest.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return dest
