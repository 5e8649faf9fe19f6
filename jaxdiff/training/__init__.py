"""The shared training machinery: train state, optimiser, sharded step, checkpoints and the loop."""
