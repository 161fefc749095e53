"""Export side of each policy family: model code, graphs and manifest block, one folder per kind."""
