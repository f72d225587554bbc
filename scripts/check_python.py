"""Exit 0 if this interpreter can run the project, else print one `error:` line and exit 1.

The Makefile runs it before creating `.venv`, so an unsupported Python fails with a sentence
instead of a numpy source build. Written to run on any Python 3 (no f-strings, no imports beyond sys).
"""
import sys

# mxnet 1.9.1 needs numpy 1.23.5, which has wheels for 3.8-3.11 only; the other pins in
# constraints.txt (networkx 3.6.1, fonttools 4.68, python-dateutil 4.0, ...) need 3.11.
SUPPORTED = (3, 11)


def check(version):
    """Return None if `version` (major, minor) is supported, else the one-line error message."""
    found = "Python %d.%d found" % tuple(version[:2])
    if tuple(version[:2]) >= (3, 12):
        return ("%s; this project needs Python 3.11 because mxnet 1.9.1 needs numpy 1.23.5, which has "
                "no wheel for 3.12+. Install python3.11 and run `make PYTHON=python3.11 ...`" % found)
    if tuple(version[:2]) < SUPPORTED:
        return ("%s; this project needs Python 3.11: the versions pinned in constraints.txt "
                "(e.g. networkx 3.6.1) require it. Install python3.11 and run `make PYTHON=python3.11 ...`"
                % found)
    return None


if __name__ == "__main__":
    message = check(sys.version_info)
    if message:
        sys.stderr.write("error: %s\n" % message)
        sys.exit(1)
