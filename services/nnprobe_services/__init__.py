"""The nnprobe gRPC servers."""
