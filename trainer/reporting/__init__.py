"""Views of a log folder: status tables, findings over seeds, seed bands, the HParams index, the report."""
