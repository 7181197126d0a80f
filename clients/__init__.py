"""Python clients for segserve (HTTP and gRPC, sync and async) and the ``segserve`` CLI.

Until they land, call the HTTP API directly (see README.md).
"""
