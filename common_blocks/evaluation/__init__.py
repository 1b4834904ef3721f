"""The competition metric, the offline scorer, post-processing, out-of-fold statistics and the exact
threshold search. Imports ``data`` and the top-level modules only, and never torch."""
