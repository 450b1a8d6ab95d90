"""``python -m e2e.modelserver``: check the environment first (fast, clear errors), then load
scikit-learn and serve."""

import os
import sys
import time

from e2e.modelserver.config import ConfigError, from_env


def main() -> int:
    try:
        config = from_env(os.environ)
    except ConfigError as exc:
        print(f"modelserver: bad configuration: {exc}", file=sys.stderr)
        return 2
    time.sleep(config.startup_delay_s)  # STARTUP_DELAY_S: a model that is slow to load
    from e2e.modelserver.server import serve  # imports scikit-learn: seconds, not millis

    try:
        serve(config)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"modelserver: cannot listen on 127.0.0.1:{config.port}: {exc}", file=sys.stderr)
        return 1
    return 0


sys.exit(main())
