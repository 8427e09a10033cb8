"""Entry point of `tcpconnect` and `python -m tcpconnect`.

SIGINT and SIGTERM are held back from the first statement on, so a Ctrl-C
while the rest of the tool imports (tens of milliseconds) waits for the
handlers cli.main installs, and ends the run in order, instead of raising
KeyboardInterrupt out of an import. A launcher that blocks them before exec
(`env --block-signal`) closes the interpreter's own start-up window too.
"""

import signal
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def run() -> None:
    from .cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
