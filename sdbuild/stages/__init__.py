"""Build stages, one module each: load, trace, convert, compress, chunk, verify, store."""
