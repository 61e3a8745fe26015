"""Generated protobuf code for pprof's profile.proto (see README.md here for how to regenerate it)."""
