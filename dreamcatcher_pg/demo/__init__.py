"""The demo: a simulated fleet end to end (:mod:`.plan` what it writes, :mod:`.fleet` running it)."""

from .fleet import DemoConfig, DemoProgress, DemoResult, run_demo
from .plan import PlannedDelta, plan_frame

__all__ = ["DemoConfig", "DemoProgress", "DemoResult", "PlannedDelta", "plan_frame", "run_demo"]
