"""SQL migrations of the generation engine (namespace "generation")."""
