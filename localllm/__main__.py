"""`python -m localllm` runs the same CLI as the `localllm` console script."""

from localllm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
