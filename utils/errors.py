"""One error type for bad user input, the wrapper that turns it into one line and exit code 2, and
the guard every script runs before it writes: no output may replace one of its inputs."""
import os
import sys


class UserError(Exception):
    """Bad input from the user (config, files, weights). Printed as one line, never a traceback."""


def run_cli(main):
    """Run `main()`; a UserError or a missing file becomes `error: ...` on stderr and exit 2; Ctrl-C
    (KeyboardInterrupt) becomes `interrupted` and exit 130, the shell's code for SIGINT."""
    try:
        code = main()
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as e:
        print("error: file not found: %s" % (e.filename or e), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _same(a, b):
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)          # also through symlinks and hard links
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(outputs, inputs):
    """UserError if an output path is one of the inputs or another output.

    outputs, inputs: [(label, path)], label as the user knows it ("--out", "--ann"); None paths are
    ignored. Run before anything is written: a script must never replace what it reads.
    """
    inputs = [(k, p) for k, p in inputs if p]
    outputs = [(k, p) for k, p in outputs if p]
    for i, (out_label, out) in enumerate(outputs):
        for in_label, path in inputs + outputs[:i]:
            if _same(out, path):
                raise UserError("%s %s is also %s: writing it would replace that file; choose another path"
                                % (out_label, out, in_label))
