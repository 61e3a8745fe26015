"""Generated protobuf code for Pyroscope's push API (see README.md here for how to regenerate it)."""
