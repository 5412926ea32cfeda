"""ftpipe's benchmarks: `python -m bench` (see bench/__main__.py) or `make bench`."""
