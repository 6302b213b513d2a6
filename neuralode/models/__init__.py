"""Neural network models: ODE blocks and the paper's task-specific networks."""
