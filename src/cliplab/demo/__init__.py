"""The embedded demo: train a small CLIP on the synthetic world, then measure and draw what it learned."""
