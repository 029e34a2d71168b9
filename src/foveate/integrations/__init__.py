"""Integrations with model libraries: transformers, diffusers, timm (each imports its library lazily)."""
