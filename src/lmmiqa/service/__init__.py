"""HTTP services: the lmmiqa scoring API and an OpenAI-compatible endpoint for a local model."""
