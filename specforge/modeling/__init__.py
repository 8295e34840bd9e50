"""Model code: draft models (pure maths), target backends and the auto registries."""
