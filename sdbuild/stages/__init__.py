"""Build stages, one module each (convert, compress, chunk, verify, store; load and trace are
convert's steps). `stage` says what a stage declares; `pipeline` lists them in order."""
