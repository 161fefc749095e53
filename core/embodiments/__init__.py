"""Robot embodiments as data (layouts, task lists), one module per robot."""
