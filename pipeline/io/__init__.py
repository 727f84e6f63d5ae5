"""Reading inputs: storage (fsspec), input sources by kind, audio decoding and its isolated child process."""
