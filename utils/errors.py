"""One error type for bad user input, and the wrapper that turns it into one line and exit code 2."""
import sys


class UserError(Exception):
    """Bad input from the user (config, files, weights). Printed as one line, never a traceback."""


def run_cli(main):
    """Run `main()`; a UserError or a missing file becomes `error: ...` on stderr and exit 2."""
    try:
        code = main()
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as e:
        print("error: file not found: %s" % (e.filename or e), file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
