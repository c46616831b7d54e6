"""What the benchmark scripts share: the machine line, a load generator, a lone Triton, the GPU
benchmark's token-id model. A mesh is run by aimesh.harness."""
