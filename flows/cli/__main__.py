"""``python -m flows.cli``: the ``mme`` command without the installed console script. Guarded,
so that importing every module (as tests/test_errors.py does) runs no command."""

from flows.cli import main

if __name__ == "__main__":
    main()
