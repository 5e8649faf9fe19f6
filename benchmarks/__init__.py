"""Side-by-side comparison of jaxdiff with PyTorch: reference models (`benchmarks.torch_models`), weight
porting PyTorch -> Flax (`benchmarks.port`) and the benchmark runner."""
