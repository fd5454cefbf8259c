"""One module per CLI command; ``onnxsparse.cli`` discovers them."""
