"""Models: the registry (versions and states), sealed artifacts and promotion gates."""
