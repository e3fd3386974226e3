"""``python -m taskmill`` is the ``taskmill`` command."""

from taskmill.cli import main

main()
