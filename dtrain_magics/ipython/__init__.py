"""IPython glue: the magics, the input transformer that awaits them, the status line."""
