"""The five stages as plain functions: (typed config, input paths, out dir) -> report."""
