"""sofamesh's compiled hot path (Cython). Importing a submodule loads its compiled extension."""
