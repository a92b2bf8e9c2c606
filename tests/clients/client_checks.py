"""What the client scripts share: a failed check ends the script with a message and status 1."""

import sys


class Failure(Exception):
    pass


def check(cond, message):
    if not cond:
        raise Failure(message)


def run(main):
    """Runs main(); any failure, including the client library's own errors (an HTTP status, a
    connection refused, a WebDriver error), becomes one line on stderr and exit status 1."""
    try:
        main()
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the script's verdict is the message
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
