"""Small helpers of the runner: checkpoint I/O, memory measurement, metrics logging, run set-up."""
