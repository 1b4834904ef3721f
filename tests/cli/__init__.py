"""The command-line contract over tables of bad inputs, outputs and interruptions."""
