"""jobbie's load benchmark (installed as `jobbie.bench`; `jobbie bench --help`)."""
