"""sofamesh's control plane: one service model over several registries, served as xDS."""
