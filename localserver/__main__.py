"""``python -m localserver --host 127.0.0.1 --port 0 [switches]``."""

import sys

from localserver.server import main

if __name__ == "__main__":
    sys.exit(main())
