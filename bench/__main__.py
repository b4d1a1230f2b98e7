"""`python -m bench` (from the repository root) or `python -m jobbie.bench`: see `run.main`."""
import fire

from jobbie.bench.run import main

if __name__ == "__main__":
    fire.Fire(main, name="bench")
